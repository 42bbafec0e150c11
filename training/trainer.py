"""What phase 1 and phase 2 share on top of transformers' Trainer."""

import dataclasses
import json
import logging
import os
import re
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, set_seed

from modeling_ilm import ILMForConditionalGeneration
from training import assets
from training.config import check_whole_numbers, save_config

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainerSettings:
    """The Trainer fields both phase configs have (read by `training_arguments`)."""

    output_dir: str = "runs/out"
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_steps: int = 100
    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    warmup_ratio: float = 0.05
    logging_steps: int = 10
    eval_steps: int = 0
    save_steps: int = 50
    gradient_checkpointing: bool = False
    bf16: bool | str = False  # "auto": bfloat16 autocast where it runs fast (assets.fast_bfloat16; the presets)
    dataloader_num_workers: int = 0
    seed: int = 0
    # Any other TrainingArguments field (report_to, fsdp, deepspeed, ...): in a config file as
    # `training_args: {report_to: tensorboard}`, or top-level / `--set report_to=tensorboard`, which
    # `load_config` files here. They win over what the phase derives from its own fields.
    training_args: dict | None = None

    def __post_init__(self):
        check_whole_numbers(self, {"batch_size": 1, "max_steps": 1, "gradient_accumulation_steps": 1, "save_steps": 1,
                                   "logging_steps": 1, "eval_steps": 0, "dataloader_num_workers": 0})
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}.")


class ComponentLossTrainer(Trainer):
    """Logs every `loss_*` field of the model output next to the total loss, and makes gradient
    accumulation and several processes train as one big batch would.

    Batches with `labels` (phase 2): transformers counts the answer tokens of the whole accumulated
    batch of every process (`num_items_in_batch`) and then leaves the loss unscaled, so each
    micro-batch's mean loss is re-weighted here to its share of that count (the ranking head's
    examples likewise). Batches without (phase 1's contrastive losses): Trainer divides each
    micro-batch's loss by the accumulation steps.
    """

    def __init__(self, *args, module_learning_rates: dict | None = None, auxiliary_losses: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.module_learning_rates = module_learning_rates or {}  # parameter-name prefix -> its own peak rate
        # name -> fn(model, step, part, parts) -> a loss added at every training micro-batch (logged as
        # loss_<name>): the mean over its `part` of `parts` equal shares of what the step draws (one per
        # micro-batch of each process), so the step's gradient is that of the whole draw however it is split
        self.auxiliary_losses = auxiliary_losses or {}
        self._micro_batch = (-1, 0)  # (step, micro-batches seen in it)
        self._components, self._counts = {}, {}
        self._rank_items = None

    def create_optimizer(self, model=None):
        """Trainer's optimizer, with the parameters under each prefix of `module_learning_rates` at
        that rate (phase 2: the item encoder phase 1 pretrained, beside the new adapter and head);
        the schedule scales every group alike."""
        if self.optimizer is not None or not self.module_learning_rates:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                rate = next((r for prefix, r in self.module_learning_rates.items() if name.startswith(prefix)), self.args.learning_rate)
                groups.setdefault((rate, name in decay), []).append(param)
        optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(
            [{"params": params, "lr": rate, "weight_decay": self.args.weight_decay if decays else 0.0} for (rate, decays), params in groups.items()],
            **optimizer_kwargs,
        )
        return self.optimizer

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._rank_items = None  # ranking examples in the accumulated batch of every process
        if batch_samples and "rank_labels" in batch_samples[0]:
            count = sum(batch["rank_labels"].ne(-100).sum() for batch in batch_samples).to(device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                count = self.accelerator.gather(count).sum()
            self._rank_items = count
        return batch_samples, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "labels" in inputs and "logits_to_keep" not in inputs:  # the LM head on the answers only: same loss
            inputs = {**inputs, "logits_to_keep": ILMForConditionalGeneration.answer_positions(inputs["labels"])}
        outputs = model(**inputs)
        for name, value in outputs.items():
            if name.startswith("loss_") and value is not None:
                self._record(name, value)
        loss = outputs.loss
        if num_items_in_batch is not None and loss is not None:
            loss = self._share_of_global_batch(outputs, inputs, num_items_in_batch)
        if model.training and self.auxiliary_losses:
            loss = self._add_auxiliary_losses(model, loss, unscaled=num_items_in_batch is not None)
        return (loss, outputs) if return_outputs else loss

    def _record(self, name, value):
        # summed on the device: no host sync per step; read once per log
        self._components[name] = self._components.get(name, 0.0) + value.detach().float()
        self._counts[name] = self._counts.get(name, 0) + 1

    def _add_auxiliary_losses(self, model, loss, unscaled: bool):
        step = self.state.global_step
        micro = self._micro_batch[1] if self._micro_batch[0] == step else 0
        self._micro_batch = (step, micro + 1)
        parts = self.args.gradient_accumulation_steps * self.args.world_size
        for name, loss_fn in self.auxiliary_losses.items():
            value = loss_fn(self.accelerator.unwrap_model(model), step, micro * self.args.world_size + self.args.process_index, parts)
            self._record(f"loss_{name}", value)
            if unscaled:  # Trainer divides by the accumulation steps only the losses it scales itself
                value = value / self.args.gradient_accumulation_steps
            loss = value if loss is None else loss + value
        return loss

    def _share_of_global_batch(self, outputs, inputs, num_items_in_batch):
        """The micro-batch's means (answer tokens; ranking examples) as their part of the means over
        the accumulated batch of every process (DDP then averages gradients over processes)."""
        answer = outputs.get("loss_lm") if outputs.get("loss_rank") is not None else outputs.loss
        loss = 0.0
        if answer is not None:
            tokens = inputs["labels"][..., 1:].ne(-100).sum()
            loss = torch.where(tokens > 0, answer * tokens, 0.0) / num_items_in_batch
        if outputs.get("loss_rank") is not None:
            weighted_rank = outputs.loss - (answer if answer is not None else 0.0)
            examples = inputs["rank_labels"].ne(-100).sum()
            loss = loss + weighted_rank * examples / self._rank_items.clamp(min=1)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            loss = loss * self.args.world_size
        return loss

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:  # a training log: add the component averages since the last one
            logs.update({name: round(float(total) / self._counts[name], 4) for name, total in self._components.items()})
            self._components, self._counts = {}, {}
        super().log(logs, *args, **kwargs)


def training_arguments(config, **overrides) -> TrainingArguments:
    """TrainingArguments from a phase config (fields shared by both phases)."""
    use_bf16 = assets.fast_bfloat16(assets.device()) if config.bf16 == "auto" else config.bf16
    values = dict(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=max(1, int(config.warmup_ratio * config.max_steps)),
        lr_scheduler_type="cosine",
        logging_steps=config.logging_steps,
        eval_strategy="steps" if config.eval_steps else "no",
        eval_steps=config.eval_steps or None,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        bf16=bool(use_bf16),
        activation_checkpointing=config.gradient_checkpointing,
        dataloader_num_workers=config.dataloader_num_workers,
        seed=config.seed,
        report_to="none",
        remove_unused_columns=False,
        # without an accelerator, transformers sets up torchrun / accelerate processes only when told
        # it runs on CPU (else each process would train alone on all the data)
        use_cpu=not torch.accelerator.is_available(),
    )
    values.update(overrides)
    values.update(config.training_args or {})
    sharded = [key for key in ("fsdp", "deepspeed") if values.get(key)]
    if sharded and not torch.accelerator.is_available():
        # accelerate shards only on accelerators: on CPU the processes would silently train as plain DDP
        raise ValueError(f"{sharded[0]}={values[sharded[0]]!r} needs GPUs (or other accelerators), and none is available: "
                         "on CPU, launch the same command without it (torchrun / accelerate then train with DDP).")
    return TrainingArguments(**values)


def last_checkpoint(output_dir):
    """The newest complete checkpoint to resume from after a kill, or None for a fresh run.

    Trainer writes `trainer_state.json` after the weights, optimizer and RNG states, so a checkpoint
    without a readable one was killed while being saved: it is skipped (with a warning) for the one
    before, which Trainer's rotation keeps until a newer checkpoint is complete."""
    if not os.path.isdir(output_dir):
        return None
    steps = {int(m.group(1)): path for path in Path(output_dir).iterdir() if path.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", path.name))}
    for step in sorted(steps, reverse=True):
        try:
            json.loads((steps[step] / "trainer_state.json").read_text())
            return str(steps[step])
        except (OSError, ValueError):
            logger.warning("%s is incomplete (no readable trainer_state.json: killed while saving?); trying an earlier checkpoint.", steps[step])
    return None


def is_main_process() -> bool:
    """True unless this is a secondary process of a torchrun / accelerate launch."""
    return int(os.environ.get("RANK", 0)) == 0


def start_run(config, config_file: str) -> Path:
    """Seeds everything, creates `config.output_dir` and records the config in it; returns the folder."""
    set_seed(config.seed)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        save_config(config, output_dir / config_file)
    return output_dir
