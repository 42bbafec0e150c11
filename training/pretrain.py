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
from datasets import load_from_disk
from safetensors.torch import load_file
from transformers import AutoTokenizer, TrainerCallback

from modeling_ilm import ILMForItemTextPretraining
from training import assets
from training.config import config_from_cli
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
    max_text_length: int = 32
    batch_size: int = 32
    max_steps: int = 300
    eval_steps: int = 100
    save_steps: int = 100
    eval_items: int | None = None  # cap on validation items for retrieval (None: all)


class Phase1Examples(torch.utils.data.Dataset):
    """One example per train item: its text, plus a related item and a user who liked it, drawn
    afresh each epoch (pairs weighted by how often the two items were consumed together).

    The draws are a function of (seed, epoch, index) alone: the same in any DataLoader worker or
    process, and a run resumed mid-epoch (whose skipped batches are never loaded) draws what the
    uninterrupted run drew. The Trainer sets the epoch (`set_epoch`, through `EpochCallback`)."""

    def __init__(self, data_dir, seed=0):
        data_dir = Path(data_dir)
        id_maps = json.loads((data_dir / "cf" / "id_maps.json").read_text())
        self.item_row = {item: row for row, item in enumerate(id_maps["item_ids"])}
        self.user_row = {user: row for row, user in enumerate(id_maps["user_ids"])}
        phase1 = load_from_disk(str(data_dir / "phase1"))
        texts = phase1["item_text_train"]
        self.items = [self.item_row[i] for i in texts["item_id"]]
        self.texts = texts["text"]
        self.partners, self.partner_weights, self.likers = {}, {}, {}
        pairs = phase1["item_item_train"]
        for a, b, count in zip(pairs["item_id"], pairs["partner_id"], pairs["count"]):
            for x, y in ((a, b), (b, a)):  # stored once per unordered pair
                self.partners.setdefault(self.item_row[x], []).append(self.item_row[y])
                self.partner_weights.setdefault(self.item_row[x], []).append(count)
        likes = phase1["user_item_train"]
        for user, item in zip(likes["user_id"], likes["item_id"]):
            self.likers.setdefault(self.item_row[item], []).append(self.user_row[user])
        self.seed, self.epoch = seed, 0

    def __len__(self):
        return len(self.items)

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __getitem__(self, index):
        item, rng = self.items[index], np.random.default_rng([self.seed, self.epoch, index])
        partner, user = -1, -1
        if item in self.partners:
            weights = np.asarray(self.partner_weights[item], dtype=float)
            partner = int(rng.choice(self.partners[item], p=weights / weights.sum()))
        if item in self.likers:
            user = int(rng.choice(self.likers[item]))
        return {"item_ids": item, "text": self.texts[index], "partner_ids": partner, "user_ids": user}


class EpochCallback(TrainerCallback):
    """Tells the dataset which epoch starts (a resumed run starts inside the checkpoint's epoch)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor(state.epoch or 0))


class Phase1Collator:
    def __init__(self, tokenizer, max_length):
        self.text_tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, examples):
        batch = self.text_tokenizer([e["text"] for e in examples], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        for key in ("item_ids", "partner_ids", "user_ids"):
            batch[key] = torch.tensor([e[key] for e in examples])
        return dict(batch)


class Phase1Trainer(ComponentLossTrainer):
    """Evaluation = retrieval over the whole catalog and ITG loss on held-out texts."""

    def __init__(self, *args, phase1_eval=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.phase1_eval = phase1_eval

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        model = self.model.eval()
        start = time.time()
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in self.phase1_eval(model).items()}
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 2)
        model.train()
        self.log(metrics)
        return metrics


def make_phase1_eval(data_dir, tokenize, eval_items=None, batch_size=64):
    """Item->text Recall@1/@10 (validation items among all catalog texts), item-item Recall@10
    (held-out consecutive pairs among all items) and ITG loss on the validation items' texts."""
    data_dir = Path(data_dir)
    catalog = json.loads((data_dir / "catalog.json").read_text())["items"]
    row = {item["item_id"]: i for i, item in enumerate(catalog)}
    phase1 = load_from_disk(str(data_dir / "phase1"))
    validation = phase1["item_text_validation"]
    query_rows = [row[i] for i in validation["item_id"]][:eval_items]
    texts = [item["text"] for item in catalog]
    pairs = [(row[a], row[b]) for a, b in zip(phase1["item_item_validation"]["item_id"], phase1["item_item_validation"]["partner_id"])]

    @torch.no_grad()
    def evaluate(model):
        metrics = {f"item_text_{k}": v for k, v in item_to_text_recall(model, tokenize, query_rows, texts).items()}
        vectors = encoder_item_vectors(model, len(catalog))
        metrics.update({f"item_item_{k}": v for k, v in item_to_item_recall(vectors, pairs).items()})
        losses = []
        for start in range(0, len(query_rows), batch_size):
            rows = torch.tensor(query_rows[start : start + batch_size], device=model.device)
            batch = tokenize([texts[r] for r in rows.tolist()]).to(model.device)
            losses.append(model.itg_loss(model.cf_vectors("item", rows), batch["input_ids"], batch["attention_mask"]).item())
        metrics["itg_loss"] = float(np.mean(losses))
        return metrics

    return evaluate


def als_item_item_recall(data_dir):
    """The same item-item retrieval straight from the raw ALS vectors: the encoder's input signal."""
    data_dir = Path(data_dir)
    vectors = load_file(str(data_dir / "cf" / "embeddings.safetensors"))["item_embeddings"]
    catalog = json.loads((data_dir / "catalog.json").read_text())["items"]
    row = {item["item_id"]: i for i, item in enumerate(catalog)}
    pairs = load_from_disk(str(data_dir / "phase1"))["item_item_validation"]
    return item_to_item_recall(vectors, [(row[a], row[b]) for a, b in zip(pairs["item_id"], pairs["partner_id"])])


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
        phase1_loss_weights=weights,
        qformer_config=qformer_config,
    )


def build_trainer(config: PretrainConfig):
    """(trainer, Q-Former tokenizer): the phase-1 Trainer over the train items."""
    model = build_model(config)
    tokenizer = AutoTokenizer.from_pretrained(assets.resolve_qformer(config.qformer))

    def tokenize(texts):
        return tokenizer(texts, padding=True, truncation=True, max_length=config.max_text_length, return_tensors="pt")

    train_dataset = Phase1Examples(config.data_dir, seed=config.seed)
    trainer = Phase1Trainer(
        model=model,
        args=training_arguments(config),
        train_dataset=train_dataset,
        eval_dataset=train_dataset if config.eval_steps else None,  # unused: evaluate() reads the catalog
        data_collator=Phase1Collator(tokenizer, config.max_text_length),
        phase1_eval=make_phase1_eval(config.data_dir, tokenize, config.eval_items),
        callbacks=[EpochCallback(train_dataset)],
    )
    return trainer, tokenizer


def pretrain(config: PretrainConfig) -> dict:
    """Runs phase 1 end to end and returns its summary (also `output_dir/phase1_results.json`)."""
    start = time.time()
    output_dir = start_run(config, "pretrain_config.yaml")
    trainer, tokenizer = build_trainer(config)
    model = trainer.model
    resume = last_checkpoint(config.output_dir)
    if resume:
        logger.info("Resuming phase 1 from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    final_metrics = trainer.evaluate()
    summary = {
        "variant": config.variant,
        "loss_weights": model.config.phase1_loss_weights,
        "steps": trainer.state.global_step,
        "time_s": round(time.time() - start, 1),
        "metrics": {k.removeprefix("eval_"): v for k, v in final_metrics.items()},
        "als_item_item": als_item_item_recall(config.data_dir),
        "chance_recall@10": 10 / model.config.num_items,
        "log_history": trainer.state.log_history,
    }
    if trainer.args.should_save:  # several processes: only the main one writes
        model.save_pretrained(output_dir / "final")  # safetensors + config only (no pickled Trainer state)
        tokenizer.save_pretrained(output_dir / "final" / "qformer_tokenizer")
        plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png", f"Phase 1 (ILM-{config.variant})")
        (output_dir / "phase1_results.json").write_text(json.dumps(summary, indent=2))
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
