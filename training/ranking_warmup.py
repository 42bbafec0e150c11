"""Ranking warm-up: a new ranking head learns item-to-item similarity from every train interaction
before phase 2, without the LLM.

At phase 2's start the head scores an item by the cosine of its key and the key of the mean of the
prompt's item tokens, plus its prior (`ILMItemScorer`: the LLM terms start at zero). That function
reads no LLM state, so it can learn from all (last `history_len` items -> next item) pairs of the
train split in seconds, where phase 2's steps show it a few thousand. The item tokens are computed
once (the encoder and adapter do not train here); the key, prior and scale learn with a softmax over
the whole catalog. Phase 2 then trains the head's LLM terms and everything else as before.

On the CPU preset the warm-up starts phase 2 at validation HR@1 0.490 instead of 0.395, and phase 2
ends where it did without it (benchmarks/quality.md, row ranking_warmup).
"""

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


def history_means(vectors: torch.Tensor, histories: torch.Tensor) -> torch.Tensor:
    """`(batch, dim)`: the mean of `vectors` (one row per item) over each history's rows, -1 pads left out."""
    present = (histories >= 0).unsqueeze(-1).to(vectors.dtype)
    return (vectors[histories.clamp(min=0)] * present).sum(1) / present.sum(1).clamp(min=1)


def item_term_scores(scorer, histories: torch.Tensor, item_tokens: torch.Tensor) -> torch.Tensor:
    """The head's scores `(batch, num_items)` with its LLM terms at zero: each history's mean item
    token as the query's item part (as `_rank` reads the prompt's item tokens)."""
    item_part = history_means(item_tokens.mean(1), histories)
    no_llm = torch.zeros_like(item_part)
    return scorer(scorer.queries(no_llm, no_llm, no_llm, item_part), item_tokens)


def check_new_head(model):
    scorer = model.item_scorer
    if scorer is None or not scorer.item_similarity:
        raise ValueError("The ranking warm-up trains the ranking head's item-similarity part: set ranking_head and ranking_item_similarity, or ranking_warmup_steps: 0.")
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
    histories, targets = next_item_pairs(data_dir, processor, built_config(data_dir).get("history_len", 10))
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
