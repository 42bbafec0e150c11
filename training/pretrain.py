"""Phase 1: pretrain the Q-Former item encoder (ITC, ITM, ITG, item-item, user-item) with Trainer.

    python -m training.pretrain --config training/configs/cpu.yaml [--set key=value ...]

Resumes from the last checkpoint in `output_dir` after a kill. Writes `output_dir/final` (a light
checkpoint that `ILMForConditionalGeneration.from_pretrained` loads for phase 2), the metrics,
and `training_curves.png`.
"""

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, TrainerCallback

from modeling_ilm import ILMForItemTextPretraining
from training import assets
from training.atomic import write_text_atomic
from training.config import config_from_cli
from training.data.phase1 import Phase1Collator, Phase1Data, Phase1Examples
from training.plots import plot_training_curves
from training.retrieval import encoder_item_vectors, item_to_item_recall, item_to_text_recall
from training.trainer import ComponentLossTrainer, TrainerSettings, is_main_process, last_checkpoint, start_run, training_arguments

logger = logging.getLogger(__name__)

# The paper's ablations (ILM_NOTES.md) as loss weights.
VARIANTS = {
    "IT": {"itc": 1.0, "itm": 1.0, "itg": 1.0, "item_item": 0.0, "user_item": 0.0},
    "IT-II": {"itc": 1.0, "itm": 1.0, "itg": 1.0, "item_item": 1.0, "user_item": 0.0},
    "IT-UI": {"itc": 1.0, "itm": 1.0, "itg": 1.0, "item_item": 0.0, "user_item": 1.0},
}


@dataclasses.dataclass
class PretrainConfig(TrainerSettings):
    data_dir: str = "runs/ml100k/data"
    output_dir: str = "runs/ml100k/phase1"
    llm: str = "default"  # Hub id or path of the frozen LLM phase 2 will use ("default": SmolLM2-135M-Instruct)
    qformer: str = "default"  # BERT-family init of the Q-Former ("default": all-MiniLM-L6-v2)
    variant: str = "IT-II"
    loss_weights: dict | None = None  # overrides the variant's weights
    num_query_tokens: int = 4
    num_cf_tokens: int = 4
    num_hidden_layers: int | None = None  # Q-Former depth; None keeps the init model's
    cf_residual: bool = False  # item tokens = query outputs + the CF tokens they read (ILMConfig.cf_residual)
    keep_cf_length: bool = False  # scale CF vectors by the table's RMS instead of layer-normalising each (ILMConfig.cf_scale)
    # keep the Q-Former's word embeddings (also ITG's output layer) as the init has them: their dense gradient and
    # optimizer state over the whole BERT vocabulary are ~30% of a 1-layer step on CPU (benchmarks/README.md)
    freeze_word_embeddings: bool = False
    max_text_length: int = 32
    batch_size: int = 32
    max_steps: int = 300
    eval_steps: int = 100
    save_steps: int = 100
    eval_items: int | None = None  # cap on validation items for retrieval (None: all)


class EpochCallback(TrainerCallback):
    """Tells the dataset which epoch starts (a resumed run starts inside the checkpoint's epoch)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor(state.epoch or 0))


class Phase1EvalCallback(TrainerCallback):
    """Phase 1's evaluation (retrieval over the whole catalog and ITG loss on held-out texts, see
    `make_phase1_eval`) every `every` steps, logged as `eval_*` beside the training losses. A callback
    rather than `Trainer.evaluate`: phase 1 evaluates by retrieval, not by a loss over an eval dataset."""

    def __init__(self, phase1_eval, every: int):
        self.phase1_eval, self.every = phase1_eval, every

    def evaluate(self, model) -> dict:
        was_training = model.training
        start = time.time()
        metrics = self.phase1_eval(model.eval())
        metrics["runtime"] = round(time.time() - start, 2)
        model.train(was_training)
        return metrics

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            metrics = {f"eval_{k}": v for k, v in self.evaluate(model).items()}
            state.log_history.append({"epoch": state.epoch, **metrics, "step": state.global_step})
            logger.info("phase-1 evaluation at step %d: %s", state.global_step, metrics)


def make_phase1_eval(data: Phase1Data, tokenize, eval_items=None, batch_size=64):
    """Item->text Recall@1/@10 (validation items among all catalog texts), item-item Recall@10
    (held-out consecutive pairs among all items) and ITG loss on the validation items' texts."""
    query_rows = data.item_rows(data.tables["item_text_validation"]["item_id"])[:eval_items]
    texts = [item["text"] for item in data.items]
    pairs = data.validation_pairs()

    @torch.no_grad()
    def evaluate(model):
        metrics = {f"item_text_{k}": v for k, v in item_to_text_recall(model, tokenize, query_rows, texts).items()}
        vectors = encoder_item_vectors(model, len(texts))
        metrics.update({f"item_item_{k}": v for k, v in item_to_item_recall(vectors, pairs).items()})
        losses = []
        for start in range(0, len(query_rows), batch_size):
            rows = torch.tensor(query_rows[start : start + batch_size], device=model.device)
            batch = tokenize([texts[r] for r in rows.tolist()]).to(model.device)
            losses.append(model.itg_loss(model.cf_vectors("item", rows), batch["input_ids"], batch["attention_mask"]).item())
        metrics["itg_loss"] = float(np.mean(losses))
        return metrics

    return evaluate


def als_item_item_recall(data_dir, data: Phase1Data):
    """The same item-item retrieval straight from the raw ALS vectors: the encoder's input signal."""
    vectors = load_file(str(Path(data_dir) / "cf" / "embeddings.safetensors"))["item_embeddings"]
    return item_to_item_recall(vectors, data.validation_pairs())


def build_model(config: PretrainConfig) -> ILMForItemTextPretraining:
    cf = load_file(str(Path(config.data_dir) / "cf" / "embeddings.safetensors"))
    weights = {**VARIANTS[config.variant], **(config.loss_weights or {})} if config.variant in VARIANTS else config.loss_weights
    if weights is None:
        raise ValueError(f"variant={config.variant!r}: use one of {sorted(VARIANTS)} or give loss_weights.")
    qformer_config = {"num_hidden_layers": config.num_hidden_layers} if config.num_hidden_layers else None
    return ILMForItemTextPretraining.from_components(
        assets.resolve_llm(config.llm),
        assets.resolve_qformer(config.qformer),
        item_embeddings=cf["item_embeddings"],
        user_embeddings=cf["user_embeddings"],
        num_query_tokens=config.num_query_tokens,
        num_cf_tokens=config.num_cf_tokens,
        cf_residual=config.cf_residual,
        cf_scale="table" if config.keep_cf_length else None,
        phase1_loss_weights=weights,
        qformer_config=qformer_config,
    )


def build_trainer(config: PretrainConfig):
    """(trainer, Q-Former tokenizer, Phase1Data): the phase-1 Trainer over the train items."""
    model = build_model(config)
    if config.freeze_word_embeddings:
        model.item_encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(assets.resolve_qformer(config.qformer))

    def tokenize(texts):
        return tokenizer(texts, padding=True, truncation=True, max_length=config.max_text_length, return_tensors="pt")

    data = Phase1Data.load(config.data_dir)
    train_dataset = Phase1Examples(data, seed=config.seed)
    trainer = ComponentLossTrainer(
        model=model,
        args=training_arguments(config, eval_strategy="no"),  # Phase1EvalCallback evaluates
        train_dataset=train_dataset,
        data_collator=Phase1Collator(tokenizer, config.max_text_length),
        callbacks=[EpochCallback(train_dataset), Phase1EvalCallback(make_phase1_eval(data, tokenize, config.eval_items), config.eval_steps)],
    )
    return trainer, tokenizer, data


def pretrain(config: PretrainConfig) -> dict:
    """Runs phase 1 end to end and returns its summary (also `output_dir/phase1_results.json`)."""
    start = time.time()
    output_dir = start_run(config, "pretrain_config.yaml")
    trainer, tokenizer, data = build_trainer(config)
    model = trainer.model
    resume = last_checkpoint(config.output_dir)
    if resume:
        logger.info("Resuming phase 1 from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    evaluation = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, Phase1EvalCallback))
    final_metrics = evaluation.evaluate(model)
    summary = {
        "variant": config.variant,
        "loss_weights": model.config.phase1_loss_weights,
        "steps": trainer.state.global_step,
        "time_s": round(time.time() - start, 1),
        "metrics": final_metrics,
        "als_item_item": als_item_item_recall(config.data_dir, data),
        "chance_recall@10": 10 / model.config.num_items,
        "log_history": trainer.state.log_history,
    }
    if trainer.args.should_save:  # several processes: only the main one writes
        model.save_pretrained(output_dir / "final")  # safetensors + config only (no pickled Trainer state)
        tokenizer.save_pretrained(output_dir / "final" / "qformer_tokenizer")
        plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png", f"Phase 1 (ILM-{config.variant})")
        write_text_atomic(output_dir / "phase1_results.json", json.dumps(summary, indent=2))  # the stage's "done" marker
    return summary


def main(argv=None):
    summary = pretrain(config_from_cli(PretrainConfig, "pretrain", __doc__, argv))
    if not is_main_process():
        return
    metrics = summary["metrics"]
    print(f"\nPhase 1 ILM-{summary['variant']}: {summary['steps']} steps in {summary['time_s']}s")
    print("| metric | value |\n|---|---|")
    for key in ("item_text_recall@1", "item_text_recall@10", "item_item_recall@10", "itg_loss"):
        print(f"| {key} | {metrics[key]:.4f} |")
    print(f"| ALS item_item_recall@10 | {summary['als_item_item']['recall@10']:.4f} |")
    print(f"| chance recall@10 | {summary['chance_recall@10']:.4f} |")


if __name__ == "__main__":
    main()
