"""Phase 2: align the item encoder with the frozen LLM, multitask, with Trainer.

    python -m training.finetune --config training/configs/cpu.yaml [--set key=value ...]

Starts from a phase-1 checkpoint (ILM), from scratch (`init: scratch`, "ILM-rand"), or with
`adapter_type: mlp` (the CoLLM-style MLP baseline). Only the encoder and adapter train; the loss
is on answer tokens only. Resumes after a kill from light checkpoints (no LLM copy in them) and
writes `output_dir/model`: a standalone folder (model + processor + catalog) that
`AutoModel.from_pretrained(..., trust_remote_code=True)` loads.
"""

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from datasets import load_from_disk
from transformers import TrainerCallback
from transformers.trainer_pt_utils import get_length_grouped_indices
from safetensors.torch import load_file

from modeling_ilm import ILMForConditionalGeneration, ILMProcessor
from training import assets
from training.atomic import write_text_atomic
from training.config import config_from_cli
from training.plots import plot_training_curves
from training.ranking_warmup import PairRankingLoss, warm_up_ranking_head
from training.trainer import ComponentLossTrainer, TrainerSettings, is_main_process, last_checkpoint, start_run, training_arguments

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FinetuneConfig(TrainerSettings):
    data_dir: str = "runs/ml100k/data"
    output_dir: str = "runs/ml100k/phase2"
    init: str = "runs/ml100k/phase1/final"  # a phase-1 checkpoint, or "scratch" (ILM-rand; also for mlp)
    name: str = "ILM"  # the row name in result tables
    llm: str = "default"
    qformer: str = "default"
    adapter_type: str = "qformer"
    num_query_tokens: int = 4  # must match the phase-1 checkpoint when starting from one
    num_cf_tokens: int = 4
    # the encoder's shape when phase 2 builds it (init: scratch, i.e. ILM-rand); with a phase-1 init the
    # checkpoint's own holds, and a value set here must match it
    num_hidden_layers: int | None = None  # None: the Q-Former init's depth
    cf_residual: bool | None = None  # None: False (ILMConfig.cf_residual)
    keep_cf_length: bool | None = None  # None: False (PretrainConfig.keep_cf_length)
    # "tokens" (the paper: item tokens only) or "title+tokens" (LLaRA's hybrid: each item's title,
    # then its tokens); saved with the processor, so evaluation and inference render items the same way
    item_rendering: str = "tokens"
    mlp_hidden_size: int = 1024
    lora: dict | None = None  # peft LoraConfig fields: LoRA on the LLM (off: the paper keeps it frozen)
    # The ranking head (E4SRec-style): scores items against the LLM's hidden state where the answer
    # starts, trained with a softmax over each batch's targets plus uniformly sampled catalog items
    # (the 20-candidate protocol's negatives are uniform too), on the rows of `ranking_tasks`.
    ranking_head: bool = False
    ranking_tasks: list | None = None  # default: next_item_title, candidate_selection
    # ranking tasks whose rows train the head only: their answers (a title the prompt does not show) get no
    # LM loss (next_item_title on the CPU preset: no gain, benchmarks/quality.md row next_item_rank_only)
    ranking_only_tasks: list | None = None
    ranking_negatives: int = 256
    ranking_loss_weight: float = 1.0
    ranking_item_similarity: bool = True  # the head starts as item-to-item similarity (ILMConfig.ranking_item_similarity)
    ranking_item_prior: bool = False  # the head adds a learned score per item, from its tokens (ILMConfig.ranking_item_prior)
    # SASRec-style: in next-item prompts, the end of every history item also predicts the next one,
    # so one forward gives ~history_len ranking examples instead of one
    ranking_history: bool = False
    # Before phase 2, the new head's item-similarity part (its step-0 function, no LLM) learns from every
    # (history -> next item) pair of the train split: steps of `ranking_warmup_batch_size` pairs, a
    # softmax over the catalog (training/ranking_warmup.py); 0: off
    ranking_warmup_steps: int = 0
    ranking_warmup_batch_size: int = 256
    ranking_warmup_learning_rate: float = 1e-3
    # At every phase-2 step the head's item part also ranks this many of those train pairs (a softmax over
    # their items and `ranking_negatives` sampled ones), through the item encoder as it trains, so the
    # answer loss does not pull the item tokens away from what the head ranks by; 0: off
    ranking_pairs_per_step: int = 0
    ranking_pairs_loss_weight: float = 1.0
    ranking_pairs_train_adapter: bool = False  # the adapter learns from the pairs too (fewer greedy answers name a candidate)
    # The learning curve: every `curve_steps` steps, validation HR@1 / NDCG@5 of the ranking head on
    # the first `curve_users` users of the 20-candidate protocol (one forward per user).
    curve_steps: int = 0
    curve_users: int = 200
    task_weights: dict | None = None  # task -> sampling weight (None: as many as the data has)
    num_train_examples: int = 2000  # examples drawn (with the task weights) for training
    num_eval_examples: int = 200
    max_length: int = 512  # longer examples are dropped (and counted), never cut through an item
    # Batches of similar length: the task mix spans 50-260 tokens, so random batches of 8 are half
    # padding (CPU preset: 224k padded tokens for 112k real ones; grouped: 115k).
    group_by_length: bool = True
    # transformers groups lengths in megabatches of 50 batches, each run from longest to shortest, so
    # the tasks (whose lengths differ) come in streaks; shuffled: the same kind of batches in a random order
    shuffle_batches: bool = False
    # Curriculum: the examples of these tasks (e.g. [item_title, item_genres, item_year]) all come
    # first, then the rest; each stage in length-grouped batches. None: one shuffled mix.
    curriculum: list | None = None
    batch_size: int = 8
    max_steps: int = 250
    # the item encoder's own peak rate (None: learning_rate): below it, phase 2 keeps more of what
    # phase 1 taught the encoder while the new adapter and ranking head learn at full rate
    encoder_learning_rate: float | None = None
    eval_steps: int = 0
    save_steps: int = 50

    def __post_init__(self):
        super().__post_init__()
        if self.encoder_learning_rate is not None and not self.encoder_learning_rate > 0:
            raise ValueError(f"encoder_learning_rate must be > 0 (or None for learning_rate), got {self.encoder_learning_rate!r}.")
        for option in ("ranking_warmup_steps", "ranking_pairs_per_step"):
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{option} must be a whole number >= 0 (0: off), got {value!r}.")
            if value and not self.ranking_head:
                raise ValueError(f"{option}={value} trains the ranking head's item part, but ranking_head is False: set ranking_head: true, or {option}: 0.")
        if not self.ranking_pairs_loss_weight > 0:
            raise ValueError(f"ranking_pairs_loss_weight must be > 0 (ranking_pairs_per_step: 0 turns the pair loss off), got {self.ranking_pairs_loss_weight!r}.")
        # early, with the values build_trainer gives the collator (no head: no negatives)
        check_ranking_only_tasks(self.ranking_only_tasks, self.ranking_tasks or RANKING_TASKS, self.ranking_negatives if self.ranking_head else 0,
                                 f"ranking_head={self.ranking_head}, ")


def mixed_examples(dataset, task_weights, size, seed):
    """`size` row indices drawn task by task in proportion to `task_weights` (seeded)."""
    tasks = np.asarray(dataset["task"])
    names = sorted(set(tasks))
    weights = {t: 1.0 for t in names} if task_weights is None else task_weights
    unknown = set(weights) - set(names)
    if unknown:
        raise ValueError(f"task_weights names tasks {sorted(unknown)} that the data lacks; tasks: {names}.")
    if task_weights is None:  # as many as the data has
        probs = np.array([(tasks == t).sum() for t in names], dtype=float)
    else:
        probs = np.array([weights.get(t, 0.0) for t in names], dtype=float)
    rng = np.random.default_rng(seed)
    drawn = rng.choice(len(names), size=size, p=probs / probs.sum())
    by_task = {t: np.flatnonzero(tasks == t) for t in names}
    return [int(rng.choice(by_task[names[k]])) for k in drawn]


def batch_order(train, first_tasks, batch_size, seed):
    """`train` reordered: every example of `first_tasks` (a curriculum; none: one stage), then the
    others. Within a stage, batches hold examples of similar length (transformers' grouping, over
    the whole stage) and come in a shuffled order, so length (which tracks the task) does not order
    the stage; batch_size 1: a plain shuffle."""
    unknown = set(first_tasks) - set(train["task"])
    if unknown:
        raise ValueError(f"curriculum names tasks {sorted(unknown)} that the drawn examples lack; tasks: {sorted(set(train['task']))}.")
    generator = torch.Generator().manual_seed(seed)
    order = []
    for stage in (True, False):
        rows = [i for i, task in enumerate(train["task"]) if (task in first_tasks) == stage]
        if not rows:
            continue
        grouped = get_length_grouped_indices([train["length"][i] for i in rows], batch_size, mega_batch_mult=len(rows), generator=generator)
        # the DataLoader cuts batches from the start: fill the batch the first stage left open, so
        # this stage's batches stay whole; a short last batch stays last
        head = -len(order) % batch_size
        batches = [grouped[i : i + batch_size] for i in range(head, len(grouped), batch_size)]
        full = [batches[b] for b in torch.randperm(len(batches), generator=generator).tolist() if len(batches[b]) == batch_size]
        order += [rows[i] for batch in [grouped[:head], *full, *(b for b in batches if len(b) < batch_size)] for i in batch]
    return train.select(order)


RANKING_TASKS = ("next_item_title", "candidate_selection")


def check_ranking_only_tasks(ranking_only_tasks, ranking_tasks, ranking_negatives, context=""):
    """Rows of `ranking_only_tasks` lose their answer labels, so they must train a ranking head
    (negatives drawn, tasks among `ranking_tasks`); otherwise they would train nothing."""
    if ranking_only_tasks and not (ranking_negatives and set(ranking_only_tasks) <= set(ranking_tasks)):
        raise ValueError(
            f"ranking_only_tasks={sorted(ranking_only_tasks)} need ranking_negatives > 0 and must be among ranking_tasks={sorted(ranking_tasks)} "
            f"of a trained ranking head ({context}ranking_negatives={ranking_negatives}): without it their rows would train nothing."
        )


class ChatCollator:
    """Tokenizes chat examples with labels on the assistant turns only (right padding).

    With `ranking_negatives`, also the ranking head's inputs: `rank_labels`, the target item's row
    for rows of `ranking_tasks` (else -100), and `rank_item_ids`, the batch's targets plus that many
    catalog items drawn uniformly (seeded per batch, so a rerun draws the same). With
    `ranking_history`, `rank_labels` are token-level: in next-item rows (history only) the last
    token of each history item is labelled with the next item, and the answer's start with the target.
    Rows of `ranking_only_tasks` keep their rank labels (token-level, at the answer's start) and lose
    their answer labels.
    """

    def __init__(self, processor, ranking_negatives=0, ranking_tasks=RANKING_TASKS, ranking_history=False, ranking_only_tasks=(), seed=0):
        self.processor, self.ranking_negatives, self.ranking_tasks = processor, ranking_negatives, set(ranking_tasks)
        self.ranking_history, self.ranking_only_tasks, self.seed = ranking_history, set(ranking_only_tasks or ()), seed
        check_ranking_only_tasks(self.ranking_only_tasks, self.ranking_tasks, ranking_negatives)

    def __call__(self, rows):
        batch = dict(
            self.processor(
                messages=[r["messages"] for r in rows],
                item_ids=[r["item_ids"] for r in rows],
                user_ids=[r["user_ids"] for r in rows],
                return_labels=True,
                add_generation_prompt=False,
                padding_side="right",
            )
        )
        if self.ranking_negatives:
            targets = [
                self.processor.rows([r["target_item_id"]])[0] if r["task"] in self.ranking_tasks and r["target_item_id"] else -100
                for r in rows
            ]
            rank_labels = torch.tensor(targets)
            if self.ranking_history or self.ranking_only_tasks:  # token-level: the answer's start is found before its labels go
                rank_labels = self.token_level(rows, batch, targets)
            for b, row in enumerate(rows):
                if row["task"] in self.ranking_only_tasks:
                    batch["labels"][b] = -100
            # the same batch always draws the same negatives (a resumed run sees what it saw)
            rng = np.random.default_rng([self.seed, *sorted(batch["input_ids"].sum(-1).tolist())])
            drawn = rng.choice(len(self.processor.catalog["items"]), size=self.ranking_negatives, replace=False)
            labelled = rank_labels[rank_labels >= 0].tolist()
            batch["rank_labels"] = rank_labels
            batch["rank_item_ids"] = torch.tensor(sorted(set(drawn.tolist()) | set(labelled)))
        return batch

    def token_level(self, rows, batch, targets):
        labels = torch.full_like(batch["input_ids"], -100)
        queries = self.processor.num_query_tokens
        for b, (row, target) in enumerate(zip(rows, targets)):
            if target < 0:
                continue
            answer = int((batch["labels"][b] != -100).long().argmax()) - 1
            labels[b, answer] = target
            if self.ranking_history and row["task"] == "next_item_title":  # every item of the prompt is history, in order
                ends = (batch["input_ids"][b] == self.processor.item_token_id).nonzero().flatten()[queries - 1 :: queries]
                items = batch["item_ids"][b][batch["item_ids"][b] >= 0]
                labels[b, ends[:-1]] = items[1:]
        return labels


class RankingCurveCallback(TrainerCallback):
    """Logs validation HR@1 / NDCG@5 of the ranking head every `every` steps (and at step 0), so the
    run leaves a learning curve: would more phase-2 steps help?"""

    def __init__(self, processor, data_dir, every, users):
        from training.evaluate import load_protocol

        self.processor, self.every = processor, every
        self.protocol = load_protocol(data_dir, split="validation", users=users)

    def measure(self, model, step, log_history):
        from training.evaluate.lm import ChatModel
        from training.evaluate.recommendation import head_scorer, ranking_section

        was_training = model.training
        values = ranking_section(head_scorer(ChatModel(model, self.processor), self.protocol), self.protocol, n_boot=0, desc="learning curve")
        model.train(was_training)
        entry = {"step": step, **{f"eval_validation_{k}_head": v["value"] for k, v in values.items()}}
        log_history.append(entry)
        logger.info("learning curve at step %d: %s", step, entry)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self.measure(model, 0, state.log_history)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.measure(model, state.global_step, state.log_history)


def build_model_and_processor(config: FinetuneConfig):
    data_dir = Path(config.data_dir)
    catalog = json.loads((data_dir / "catalog.json").read_text())
    processor = ILMProcessor.from_components(
        assets.resolve_llm(config.llm), catalog=catalog, num_query_tokens=config.num_query_tokens, item_rendering=config.item_rendering
    )
    if config.init == "scratch" or config.adapter_type == "mlp":
        cf = load_file(str(data_dir / "cf" / "embeddings.safetensors"))
        model = ILMForConditionalGeneration.from_components(
            assets.resolve_llm(config.llm),
            assets.resolve_qformer(config.qformer) if config.adapter_type == "qformer" else None,
            item_embeddings=cf["item_embeddings"],
            user_embeddings=cf["user_embeddings"],
            item_token_id=processor.item_token_id,
            user_token_id=processor.user_token_id,
            num_query_tokens=config.num_query_tokens,
            num_cf_tokens=config.num_cf_tokens,
            cf_residual=bool(config.cf_residual),
            cf_scale="table" if config.keep_cf_length else None,
            qformer_config={"num_hidden_layers": config.num_hidden_layers} if config.num_hidden_layers else None,
            adapter_type=config.adapter_type,
            mlp_hidden_size=config.mlp_hidden_size,
        )
    else:
        model = ILMForConditionalGeneration.from_pretrained(config.init)
        saved = {
            "num_query_tokens": model.config.num_query_tokens,
            "num_hidden_layers": model.config.qformer_config.num_hidden_layers,
            "cf_residual": model.config.cf_residual,
            "keep_cf_length": model.config.cf_scale is not None,
        }
        for key, value in saved.items():
            asked = getattr(config, key)
            if asked is not None and asked != value:
                raise ValueError(f"{config.init} has {key}={value} but this config says {asked}; make them equal.")
        model.config.item_token_id, model.config.user_token_id = processor.item_token_id, processor.user_token_id
    if config.lora and not model.config.lora_config:
        model.enable_lora(**config.lora)
    if config.ranking_head and model.item_scorer is None:
        model.enable_ranking_head(
            ranking_loss_weight=config.ranking_loss_weight, item_similarity=config.ranking_item_similarity, item_prior=config.ranking_item_prior
        )
    if model.config.num_items != len(catalog["items"]):
        raise ValueError(f"The model's CF table has {model.config.num_items} items, the catalog {len(catalog['items'])}.")
    return model, processor


def build_trainer(config: FinetuneConfig):
    """(trainer, processor, example counts per split): the phase-2 Trainer over the drawn examples."""
    model, processor = build_model_and_processor(config)
    phase2 = load_from_disk(str(Path(config.data_dir) / "phase2"))
    lengths = {}

    def short_enough(split, indices):
        rows = phase2[split].select(indices)
        sizes = [
            len(processor(messages=row["messages"], item_ids=row["item_ids"], user_ids=row["user_ids"], add_generation_prompt=False)["input_ids"][0])
            for row in rows
        ]
        kept = [i for i, size in zip(indices, sizes) if size <= config.max_length]
        kept_sizes = [size for size in sizes if size <= config.max_length]
        lengths[split] = {
            "drawn": len(indices),
            "dropped_too_long": len(indices) - len(kept),
            "mean_tokens": float(np.mean(kept_sizes)) if kept else 0.0,
        }
        return phase2[split].select(kept).add_column("length", kept_sizes)  # read by the length-grouped sampler

    train = short_enough("train", mixed_examples(phase2["train"], config.task_weights, config.num_train_examples, config.seed))
    evaluation = short_enough("validation", mixed_examples(phase2["validation"], config.task_weights, config.num_eval_examples, config.seed)) if config.eval_steps else None
    logger.info("Phase-2 examples: %s", lengths)
    ordered = bool(config.curriculum) or (config.shuffle_batches and config.group_by_length)
    if ordered:
        train = batch_order(train, config.curriculum or [], config.batch_size if config.group_by_length else 1, config.seed)

    model.save_language_model = False  # checkpoints: trained weights + processor, never the frozen LLM again
    trainer = ComponentLossTrainer(
        model=model,
        args=training_arguments(
            config,
            prediction_loss_only=True,
            per_device_eval_batch_size=config.batch_size,
            train_sampling_strategy="sequential" if ordered else "group_by_length" if config.group_by_length else "random",
        ),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=processor,
        module_learning_rates={"item_encoder.": config.encoder_learning_rate} if config.encoder_learning_rate is not None else None,
        auxiliary_losses={"pairs": PairRankingLoss.for_model(
            model, processor, config.data_dir, config.ranking_pairs_per_step, config.ranking_negatives, config.ranking_pairs_loss_weight, config.seed,
            config.ranking_pairs_train_adapter,
        )} if config.ranking_pairs_per_step else None,
        callbacks=[RankingCurveCallback(processor, config.data_dir, config.curve_steps, config.curve_users)] if config.curve_steps and config.ranking_head else None,
        data_collator=ChatCollator(
            processor,
            ranking_negatives=config.ranking_negatives if config.ranking_head else 0,
            ranking_tasks=config.ranking_tasks or RANKING_TASKS,
            ranking_history=config.ranking_history,
            ranking_only_tasks=config.ranking_only_tasks,
            seed=config.seed,
        ),
    )
    return trainer, processor, lengths


def finetune(config: FinetuneConfig) -> dict:
    start = time.time()
    output_dir = start_run(config, "finetune_config.yaml")
    trainer, processor, lengths = build_trainer(config)
    model, train = trainer.model, trainer.train_dataset
    resume = last_checkpoint(config.output_dir)
    if resume:
        logger.info("Resuming phase 2 from %s", resume)
    warmup = None
    if config.ranking_warmup_steps and not resume:  # a resumed run's checkpoint holds the warmed-up head
        warmup = warm_up_ranking_head(
            model, processor, config.data_dir, config.ranking_warmup_steps, config.ranking_warmup_batch_size, config.ranking_warmup_learning_rate, config.seed
        )
    train_output = trainer.train(resume_from_checkpoint=resume)

    model_dir = output_dir / "model"
    samples_per_second = train_output.metrics.get("train_samples_per_second") or 0.0
    summary = {
        "name": config.name,
        "init": config.init,
        "adapter_type": config.adapter_type,
        "steps": trainer.state.global_step,
        "examples": lengths,
        "tasks": {task: train["task"].count(task) for task in sorted(set(train["task"]))},
        "time_s": round(time.time() - start, 1),
        "train_samples_per_second": samples_per_second,
        "train_tokens_per_second": round(samples_per_second * lengths["train"]["mean_tokens"], 1),
        "final_train_loss": train_output.metrics.get("train_loss"),
        "ranking_warmup": warmup,
        "log_history": trainer.state.log_history,
    }
    if trainer.args.should_save:  # several processes: only the main one writes
        model.save_pretrained(model_dir, include_language_model=True)
        processor.save_pretrained(model_dir)
        plot_training_curves(trainer.state.log_history, model_dir / "training_curves.png", f"Phase 2 ({config.name})")
        write_text_atomic(output_dir / "phase2_results.json", json.dumps(summary, indent=2))  # the stage's "done" marker
    return summary


def main(argv=None):
    summary = finetune(config_from_cli(FinetuneConfig, "finetune", __doc__, argv))
    if is_main_process():
        print(f"\nPhase 2 {summary['name']}: {summary['steps']} steps in {summary['time_s']}s, final train loss {summary['final_train_loss']:.4f}")


if __name__ == "__main__":
    main()
