"""The ranking head's item part learns from every train interaction, without the LLM: before phase
2 (the warm-up) and, as an auxiliary loss, at each phase-2 step (the pair loss).

At phase 2's start the head scores an item by the cosine of its key and the key of the mean of the
prompt's item tokens, plus its prior (`ILMItemScorer`: the LLM terms start at zero). That function
reads no LLM state, so it can learn from all (last `history_len` items -> next item) pairs of the
train split in seconds, where phase 2's steps show it a few thousand. The warm-up computes the item
tokens once (the encoder and adapter do not train) and fits the key, prior and scale with a softmax
over the whole catalog: on the CPU preset phase 2 then starts at validation HR@1 0.490 instead of
0.395, but ends where it did without it, because the answer loss moves the item tokens away from
the key the warm-up fit (benchmarks/quality.md, row ranking_warmup).

The pair loss (`PairRankingLoss`) keeps that function trained while phase 2 runs: each step it ranks
a batch of those pairs through the item encoder as it is now, so its gradient reaches the encoder
too and the item tokens keep the CF geometry the head ranks by. The adapter, which places the item
tokens where the frozen LLM reads them, learns from the answers only unless `train_adapter`: pulled
by the pairs too, fewer greedy answers name a listed candidate (benchmarks/quality.md, rows ranking_pairs*).
"""

import contextlib
import logging
import time
from pathlib import Path

import torch
from datasets import load_from_disk
from torch import nn
from tqdm.auto import tqdm

from modeling_ilm.modeling_ilm import float32_region
from training.evaluate.protocol import built_config

logger = logging.getLogger(__name__)


def next_item_pairs(data_dir, processor, history_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every train interaction after a user's first, as (history, next item) in CF-table rows:
    histories `(N, history_len)` of the items before it (oldest first, right-padded with -1) and
    targets `(N,)`. The train split is sorted by user, then time."""
    train = load_from_disk(str(Path(data_dir) / "interactions" / "train")).to_pandas()
    histories, targets = [], []
    for items in train.groupby("user_id", sort=False)["item_id"].agg(list):
        rows = processor.rows(items)
        for t in range(1, len(rows)):
            history = rows[max(0, t - history_len) : t]
            histories.append(history + [-1] * (history_len - len(history)))
            targets.append(rows[t])
    if not targets:
        raise ValueError(f"{data_dir}: no user has two train interactions, so there is nothing to warm the ranking head up on.")
    return torch.tensor(histories), torch.tensor(targets)


def train_pairs(data_dir, processor) -> tuple[torch.Tensor, torch.Tensor]:
    """`next_item_pairs` with histories as long as the data build's prompts show."""
    return next_item_pairs(data_dir, processor, built_config(data_dir).get("history_len", 10))


def history_means(vectors: torch.Tensor, histories: torch.Tensor) -> torch.Tensor:
    """`(batch, dim)`: the mean of `vectors` (one row per item) over each history's rows, -1 pads left out."""
    present = (histories >= 0).unsqueeze(-1).to(vectors.dtype)
    return (vectors[histories.clamp(min=0)] * present).sum(1) / present.sum(1).clamp(min=1)


def item_term_scores(scorer, histories: torch.Tensor, item_tokens: torch.Tensor) -> torch.Tensor:
    """The head's scores `(batch, num_items)` with its LLM terms at zero: each history's mean item
    token as the query's item part (as `_rank` reads the prompt's item tokens)."""
    return scorer(scorer.queries(None, None, None, history_means(item_tokens.mean(1), histories)), item_tokens)


def check_item_part(model, option: str):
    scorer = model.item_scorer
    if scorer is None or not scorer.item_similarity:
        raise ValueError(f"{option} trains the ranking head's item-similarity part: set ranking_head and ranking_item_similarity, or {option}: 0.")


def check_new_head(model):
    check_item_part(model, "ranking_warmup_steps")
    scorer = model.item_scorer
    if any(part[1].weight.any() or part[1].bias.any() for part in scorer.query.values()):
        raise ValueError(
            "The ranking head already reads the LLM (its query's LLM terms are not zero), so it was trained before; "
            "the warm-up is for a new head: set ranking_warmup_steps: 0 to go on training this one."
        )


def warm_up_ranking_head(model, processor, data_dir, steps: int, batch_size: int = 256, learning_rate: float = 1e-3, seed: int = 0) -> dict:
    """Trains a new `model.item_scorer`'s key, prior and scale on `next_item_pairs` (histories as long
    as the data build's prompts show) for `steps` steps of `batch_size` pairs, a softmax over the
    catalog. Returns what a run summary keeps."""
    check_new_head(model)
    start = time.perf_counter()
    histories, targets = train_pairs(data_dir, processor)
    with torch.no_grad(), float32_region(model.device):
        item_tokens = model.get_item_tokens(item_ids=torch.arange(model.config.num_items, device=model.device)).float()
    scorer = model.item_scorer
    # the key, prior and scale: the query's LLM terms get no gradient here, and AdamW's decay would still move them
    item_part = [p for name, p in scorer.named_parameters() if not name.startswith("query.") and p.requires_grad]
    optimizer = torch.optim.AdamW(item_part, lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    was_training = scorer.training
    scorer.train()
    losses = []
    for _ in tqdm(range(steps), desc="ranking warm-up", leave=False):
        batch = torch.randint(len(targets), (batch_size,), generator=generator)
        logits = item_term_scores(scorer, histories[batch].to(model.device), item_tokens)
        loss = nn.functional.cross_entropy(logits, targets[batch].to(model.device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    scorer.train(was_training)
    tail = losses[-max(1, steps // 10) :]
    summary = {
        "steps": steps,
        "pairs": len(targets),
        "first_loss": round(losses[0], 4) if losses else None,
        "final_loss": round(sum(tail) / len(tail), 4) if losses else None,
        "time_s": round(time.perf_counter() - start, 1),
    }
    logger.info("Ranking warm-up: %d steps over %d (history -> next item) pairs, loss %s -> %s, %.1fs",
                steps, len(targets), summary["first_loss"], summary["final_loss"], summary["time_s"])
    return summary


@contextlib.contextmanager
def constant(module: nn.Module, active: bool = True):
    """`module`'s parameters as constants in the graphs built inside: gradients pass through it to its
    inputs, none reach its parameters."""
    flags = [p.requires_grad for p in module.parameters()]
    if active:
        module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


class PairRankingLoss:
    """Phase 2's auxiliary loss: the head's item part (`item_term_scores`) ranks `batch_size` train
    (history -> next item) pairs per step, a softmax over the items they name and `negatives`
    uniformly drawn catalog items, with item tokens from the encoder as it trains (and the adapter,
    with `train_adapter`); `weight` times the mean cross-entropy. A step's draw is seeded by (seed,
    step), so a resumed run draws what the uninterrupted one would, and each micro-batch of each
    process takes an equal part of its pairs (`part` of `parts`)."""

    def __init__(self, histories: torch.Tensor, targets: torch.Tensor, batch_size: int, negatives: int, weight: float, seed: int = 0, train_adapter: bool = False):
        self.histories, self.targets = histories, targets
        self.batch_size, self.negatives, self.weight, self.seed, self.train_adapter = batch_size, negatives, weight, seed, train_adapter

    @classmethod
    def for_model(cls, model, processor, data_dir, batch_size: int, negatives: int, weight: float, seed: int = 0, train_adapter: bool = False) -> "PairRankingLoss":
        check_item_part(model, "ranking_pairs_per_step")
        histories, targets = train_pairs(data_dir, processor)
        logger.info("Pair loss: %d train (history -> next item) pairs, %d per step, weight %s", len(targets), batch_size, weight)
        return cls(histories, targets, batch_size, negatives, weight, seed, train_adapter)

    def __call__(self, model, step: int, part: int = 0, parts: int = 1) -> torch.Tensor:
        if self.batch_size % parts:
            raise ValueError(
                f"ranking_pairs_per_step={self.batch_size} must split evenly over the step's {parts} micro-batches "
                "(gradient_accumulation_steps x processes): make it a multiple of that."
            )
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        batch = torch.randint(len(self.targets), (self.batch_size,), generator=generator)
        histories, targets = self.histories[batch], self.targets[batch]
        present = histories >= 0
        drawn = torch.randint(model.config.num_items, (self.negatives,), generator=generator)
        # every item the step names, once: histories and targets index into it
        items, inverse = torch.unique(torch.cat([histories[present], targets, drawn]), return_inverse=True)
        named = int(present.sum())
        local = torch.full_like(histories, -1)
        local[present] = inverse[:named]
        local_targets = inverse[named : named + len(targets)]
        share = slice(part * self.batch_size // parts, (part + 1) * self.batch_size // parts)
        device = model.device
        with float32_region(device), constant(model.adapter, not self.train_adapter):
            item_tokens = model.encode_cf(model.cf_vectors("item", items.to(device)))
            logits = item_term_scores(model.item_scorer, local[share].to(device), item_tokens)
            return self.weight * nn.functional.cross_entropy(logits, local_targets[share].to(device))
