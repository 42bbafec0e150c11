"""Training and inference speed as ratios to the bare frozen LLM, measured side by side in one run.

    python benchmarks/speed.py [--preset cpu] [--data runs/ml100k/data] [--steps 10] [--users 20] [--json FILE]

1. Phase 2: the preset's Trainer step (item encoder, frozen LLM, ranking head: forward, backward,
   optimizer) against the bare LLM's forward+backward on the same batches (each right after the
   step on it, so drifts of a shared machine weigh on both sides alike), with item placeholders
   replaced by a text token and gradients flowing to the input embeddings as they flow to the item
   tokens, and logits at the answer positions only, as the step takes them. Target: ratio <= 1.15.
   Also the bare LLM with logits at every position (what the step cost before it kept the answers').
2. Phase 1: the preset's Trainer step, per example.
3. Generation: `bench_generation.py` (precomputed catalog item tokens against the bare LLM). Target <= 1.05.
4. Evaluation: users per second for each section of the 20-candidate protocol (validation split),
   and for the main job's recommendation sections together (they share prompt forwards), in float32
   and in the precision `--dtype auto` picks here (bfloat16 on a GPU or a CPU with AMX or AVX512-BF16).

The weights are whatever `--steps` steps of each phase leave: cost does not depend on them. On a
GPU the preset's bf16 applies to both sides of the phase-2 ratio (Trainer's autocast).
"""

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent))
from bench_generation import generation_times  # noqa: E402

from modeling_ilm import ILMForConditionalGeneration  # noqa: E402
from training import assets, finetune, pretrain  # noqa: E402
from training.config import load_config  # noqa: E402
from training.evaluate import evaluate_model  # noqa: E402
from training.main import load_preset  # noqa: E402

EVAL_SECTIONS = ("ranking_head", "ranking", "generation", "generation_constrained")
MAIN_SECTIONS = ("ranking", "ranking_mean", "ranking_calibrated", "ranking_head", "generation", "generation_constrained", "full_catalog")


def synchronized_now():
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class StepTimer(TrainerCallback):
    """Per optimizer step: compute time (step begin to end) and the data loading and collation before
    it (previous step's end to this begin). `after_step(step)`, if given, runs right after each step
    and is timed apart (the bare LLM on the same batches: interleaved, so a machine that speeds up
    or slows down during the run weighs on both sides alike)."""

    def __init__(self, after_step=None):
        self.compute, self.loading, self.after_step_s, self.after_step = [], [], [], after_step
        self.end = None

    def on_step_begin(self, args, state, control, **kwargs):
        self.begin = synchronized_now()
        if self.end is not None:
            self.loading.append(self.begin - self.end)

    def on_step_end(self, args, state, control, **kwargs):
        now = synchronized_now()
        self.compute.append(now - self.begin)
        if self.after_step is not None:
            self.after_step(state.global_step - 1)
            self.after_step_s.append(synchronized_now() - now)
        self.end = synchronized_now()

    def after(self, warmup):
        """(compute s, wall s = compute + loading, after_step s) per step, means over the steps after `warmup`."""
        compute = statistics.mean(self.compute[warmup:])
        wall = compute + statistics.mean(self.loading[warmup - 1 :])
        return compute, wall, statistics.mean(self.after_step_s[warmup:]) if self.after_step_s else None


def phase_config(cls, settings, section, **fields):
    return load_config(cls, {**settings.get(section, {}), **fields})


def bench_phase1(settings, data_dir, out, steps, warmup):
    config = phase_config(
        pretrain.PretrainConfig, settings, "pretrain", data_dir=str(data_dir), output_dir=str(out / "phase1"),
        max_steps=warmup + steps, eval_steps=0, save_steps=10**6, logging_steps=10**6,
    )
    trainer = pretrain.build_trainer(config)[0]
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    trainer.model.save_pretrained(out / "phase1" / "final")
    compute, wall, _ = timer.after(warmup)
    return {"batch_size": config.batch_size, "step_s": wall, "compute_step_s": compute, "ms_per_example": 1000 * wall / config.batch_size}


def bare_llm_step(trainer, batch, text_token_id, answer_logits_only):
    """The frozen LLM alone: forward + backward to its input embeddings on the batch's tokens, with
    logits at every position (as `labels=` gives them) or, as the phase-2 step takes them, only
    where an answer token is predicted."""
    llm = trainer.model.language_model
    embedding = llm.get_input_embeddings()
    input_ids = batch["input_ids"].masked_fill(batch["input_ids"] >= embedding.num_embeddings, text_token_id)
    with trainer.accelerator.autocast():
        embeds = embedding(input_ids).detach().requires_grad_()
        if answer_logits_only:
            keep = ILMForConditionalGeneration.answer_positions(batch["labels"])
            logits = llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
            next_labels = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:][:, keep]
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), next_labels.flatten())
        else:
            loss = llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    loss.backward()


def bench_phase2(settings, data_dir, out, steps, warmup):
    fields = settings.get("finetune", {})
    config = phase_config(
        finetune.FinetuneConfig, settings, "finetune", data_dir=str(data_dir), output_dir=str(out / "phase2"),
        init=str(out / "phase1" / "final"), max_steps=warmup + steps, eval_steps=0, save_steps=10**6, logging_steps=10**6,
        curve_steps=0, num_train_examples=(warmup + steps) * fields.get("batch_size", 8) * fields.get("gradient_accumulation_steps", 1),
    )
    trainer, processor, _ = finetune.build_trainer(config)
    # the batches the Trainer will draw, in its order (the sampler is sequential or seeded), for the bare LLM
    device, accumulation = trainer.args.device, trainer.args.gradient_accumulation_steps
    batches = [{k: v.to(device) for k, v in b.items() if torch.is_tensor(v)} for b in itertools.islice(trainer.get_train_dataloader(), (warmup + steps) * accumulation)]
    text_token_id = processor.tokenizer.convert_tokens_to_ids("movie")

    def bare_step(step, answer_logits_only=True):
        for batch in batches[step * accumulation : (step + 1) * accumulation]:
            bare_llm_step(trainer, batch, text_token_id, answer_logits_only)

    timer = StepTimer(after_step=bare_step)
    trainer.add_callback(timer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    compute, wall, bare = timer.after(warmup)
    start = synchronized_now()  # logits at every position: timed after training, for the LM head's share only
    for step in range(warmup, warmup + steps):
        bare_step(step, answer_logits_only=False)
    bare_all_logits = (synchronized_now() - start) / steps
    tokens = statistics.mean(int(b["attention_mask"].sum()) for b in batches[warmup:])
    padded = statistics.mean(b["attention_mask"].numel() for b in batches[warmup:])
    return {
        "batch_size": config.batch_size, "real_tokens_per_step": tokens, "padded_tokens_per_step": padded,
        "step_s": wall, "compute_step_s": compute, "bare_llm_fwd_bwd_s": bare, "bare_llm_all_logits_s": bare_all_logits,
        "ratio": compute / bare, "ratio_wall": wall / bare, "tokens_per_s": tokens / wall,
        "peak_gib": peak, "bf16": trainer.args.bf16,
    }, trainer.model, processor


def bench_evaluation(model, processor, data_dir, users):
    model.eval()
    speeds = {}

    def users_per_s(sections):
        result = evaluate_model(model, processor, data_dir, split="validation", users=users, sections=sections, bootstrap=100)
        return users / next(iter(result["models"].values()))["timing_s"]

    for section in EVAL_SECTIONS:
        speeds[section] = users_per_s([section])
    for dtype in dict.fromkeys([torch.float32, assets.dtype("auto", str(model.device))]):
        model.language_model.to(dtype)  # as the main job: the item encoder and head stay float32
        speeds[f"all of {', '.join(MAIN_SECTIONS)} ({str(dtype).removeprefix('torch.')})"] = users_per_s(list(MAIN_SECTIONS))
    model.to(torch.float32)
    return speeds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--data", default="runs/ml100k/data", help="a built data folder (python -m training.data)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per phase, after --warmup")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--users", type=int, default=20, help="users per evaluation section")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    settings = load_preset(args.preset)
    device = assets.device()
    hardware = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"

    with tempfile.TemporaryDirectory() as tmp:
        phase1 = bench_phase1(settings, args.data, Path(tmp), args.steps, args.warmup)
        phase2, model, processor = bench_phase2(settings, args.data, Path(tmp), args.steps, args.warmup)
    queries = settings["finetune"].get("num_query_tokens", 4)
    generation, prompt_length = generation_times(queries=queries, device=device)
    evaluation = bench_evaluation(model, processor, args.data, args.users)
    bare_generation = generation["bare LLM (text prompt)"][0]
    figures = {"preset": args.preset, "hardware": hardware, "phase1": phase1, "phase2": phase2, "evaluation_users_per_s": evaluation,
               "generation": {name: {"best_s": best, "ratio": best / bare_generation} for name, (best, _) in generation.items()}}

    peak = f", peak GPU memory {phase2['peak_gib']:.1f} GiB" if phase2["peak_gib"] is not None else ""
    print(f"\n{args.preset} preset on {hardware}{' (bf16)' if phase2['bf16'] else ''}; {args.steps} timed steps after {args.warmup}{peak}")
    print("| measure | figure | target |\n|---|---|---|")
    print(f"| phase-2 step / bare LLM fwd+bwd, same batches | {phase2['ratio']:.2f} ({phase2['compute_step_s']:.3f} s / {phase2['bare_llm_fwd_bwd_s']:.3f} s) | <= 1.15 |")
    print(f"| same, step with data loading | {phase2['ratio_wall']:.2f} ({phase2['step_s']:.3f} s) | |")
    print(f"| bare LLM fwd+bwd with logits at every position / at the answers only | {phase2['bare_llm_all_logits_s'] / phase2['bare_llm_fwd_bwd_s']:.2f} "
          f"({phase2['bare_llm_all_logits_s']:.3f} s) | |")
    print(f"| phase-2 real tokens / s | {phase2['tokens_per_s']:.0f} ({phase2['real_tokens_per_step']:.0f} real of {phase2['padded_tokens_per_step']:.0f} per batch of {phase2['batch_size']}) | |")
    print(f"| phase-1 step per example | {phase1['ms_per_example']:.1f} ms (batch {phase1['batch_size']}, {phase1['step_s']:.3f} s/step) | |")
    for name, values in figures["generation"].items():
        if name != "bare LLM (text prompt)":
            print(f"| generation, {name} / bare LLM ({prompt_length}-token prompt, 32 new) | {values['ratio']:.3f} ({values['best_s']:.3f} s) | <= 1.05 |")
    for section, speed in evaluation.items():
        print(f"| evaluation users / s, {section} | {speed:.2f} | |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
