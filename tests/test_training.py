"""Phase 1 and phase 2 scripts end to end on tiny components and the small generic data fixture:
configs, task mixing, resume after a kill, and checkpoints that load into the next stage."""

import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk
from safetensors.torch import load_file
from transformers import AutoModel

from training.compare import phase2_runs
from training.config import load_config, save_config
from training.finetune import FinetuneConfig, build_model_and_processor, build_trainer, finetune, mixed_examples
from training.data.phase1 import Phase1Data, Phase1Examples
from training.pretrain import PretrainConfig, pretrain
from training.trainer import last_checkpoint, training_arguments

@pytest.fixture(scope="module")
def phase1_dir(tiny_components, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("phase1")
    pretrain(tiny_pretrain_config(tiny_components, data_dir, out, max_steps=4))
    return out


def tiny_pretrain_config(tiny_components, data_dir, out, **overrides):
    values = dict(
        data_dir=str(data_dir), output_dir=str(out), llm=tiny_components["llm"], qformer=tiny_components["bert"],
        num_query_tokens=2, num_cf_tokens=2, batch_size=8, max_steps=4, logging_steps=1, eval_steps=2, save_steps=2, learning_rate=1e-3,
    )
    return PretrainConfig(**{**values, **overrides})


def test_config_files_sections_overrides_and_errors(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("pretrain:\n  batch_size: 7\n  learning_rate: 5e-4\nfinetune:\n  batch_size: 3\n")
    config = load_config(PretrainConfig, preset, ["max_steps=9"], section="pretrain")
    assert (config.batch_size, config.learning_rate, config.max_steps) == (7, 5e-4, 9)
    assert load_config(FinetuneConfig, preset, section="finetune").batch_size == 3
    with pytest.raises(ValueError, match="unknown config keys \\['lr'\\]"):
        load_config(PretrainConfig, None, ["lr=1"])
    with pytest.raises(ValueError, match="must be a number"):
        load_config(PretrainConfig, None, ["learning_rate=fast"])


def test_phase1_examples_draw_real_partners_and_likers(data_dir):
    data = Phase1Data.load(data_dir)
    examples = Phase1Examples(data, seed=0)
    pairs = load_from_disk(str(data_dir / "phase1"))["item_item_train"]
    related = {(data.item_row[a], data.item_row[b]) for a, b in zip(pairs["item_id"], pairs["partner_id"])}
    related |= {(b, a) for a, b in related}
    for index in range(len(examples)):
        example = examples[index]
        assert example["partner_ids"] == -1 or (example["item_ids"], example["partner_ids"]) in related
        assert example["user_ids"] == -1 or example["user_ids"] in examples.likers[example["item_ids"]]


def test_phase1_draws_depend_on_seed_epoch_and_index_only(data_dir):
    """Fresh draws each epoch, the same in any worker and whatever was drawn before: a resumed run
    (which never loads the batches it skips) draws what the uninterrupted one drew."""

    def draws(examples, order=None, workers=0):
        order = order or list(range(len(examples)))
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(examples, order), batch_size=None, num_workers=workers)
        return {i: (int(e["partner_ids"]), int(e["user_ids"])) for i, e in zip(order, loader)}

    examples = Phase1Examples(Phase1Data.load(data_dir), seed=0)
    first = draws(examples)
    assert draws(examples, workers=2) == first
    assert draws(examples, order=list(reversed(range(len(examples))))[: len(examples) // 2]).items() <= first.items()
    examples.set_epoch(1)
    assert draws(examples) != first
    assert draws(Phase1Examples(Phase1Data.load(data_dir), seed=1)) != first


def test_a_results_file_killed_while_written_keeps_its_previous_content(tmp_path):
    """Stage markers (phase1/phase2_results.json, results.json, timings.json) are written atomically:
    SIGKILL in the middle of writing one leaves the old file whole and no half-written one."""
    target = tmp_path / "results.json"
    target.write_text('{"old": true}')
    code = "import sys; from training.atomic import write_text_atomic; write_text_atomic(sys.argv[1], 'x' * 400_000_000)"
    writer = subprocess.Popen([sys.executable, "-c", code, str(target)])
    while not list(tmp_path.glob(".results.json.*.tmp")) and writer.poll() is None:
        pass
    writer.send_signal(signal.SIGKILL)
    assert writer.wait() == -signal.SIGKILL
    assert target.read_text() == '{"old": true}'


def test_resume_skips_checkpoints_killed_while_saving(tmp_path, caplog):
    for step, state in ((2, "{}"), (4, '{"global_step": 4'), (10, None)):  # complete; truncated state; no state yet
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    with caplog.at_level("WARNING"):
        assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert "checkpoint-10 is incomplete" in caplog.text and "checkpoint-4 is incomplete" in caplog.text
    assert last_checkpoint(tmp_path / "missing") is None


def test_task_mixing_follows_the_weights(data_dir):
    train = load_from_disk(str(data_dir / "phase2"))["train"]
    rows = mixed_examples(train, {"item_title": 3.0, "item_year": 1.0}, size=400, seed=0)
    tasks = [train[i]["task"] for i in rows]
    assert set(tasks) == {"item_title", "item_year"}
    assert 0.65 < tasks.count("item_title") / 400 < 0.85
    assert rows == mixed_examples(train, {"item_title": 3.0, "item_year": 1.0}, size=400, seed=0)  # seeded
    with pytest.raises(ValueError, match="lacks"):
        mixed_examples(train, {"poetry": 1.0}, size=4, seed=0)


def test_phase1_run_logs_each_loss_evaluates_and_saves(phase1_dir):
    results = json.loads((phase1_dir / "phase1_results.json").read_text())
    assert results["steps"] == 4
    logged = {k for entry in results["log_history"] for k in entry}
    assert {"loss_itc", "loss_itm", "loss_itg", "loss_item_item", "eval_item_text_recall@10", "eval_item_item_recall@10", "eval_itg_loss"} <= logged
    assert 0.0 <= results["metrics"]["item_text_recall@10"] <= 1.0
    assert (phase1_dir / "training_curves.png").stat().st_size > 10_000
    assert not list((phase1_dir / "final").glob("*.bin"))  # safetensors only


def test_phase1_can_keep_the_qformer_word_embeddings_frozen(tiny_components, data_dir, tmp_path):
    from training.pretrain import build_trainer

    config = tiny_pretrain_config(tiny_components, data_dir, tmp_path, max_steps=2, eval_steps=0, freeze_word_embeddings=True)
    trainer, _, _ = build_trainer(config)
    encoder = trainer.model.item_encoder
    words, others = encoder.embeddings.word_embeddings.weight.detach().clone(), encoder.query_tokens.detach().clone()
    trainer.train()
    assert torch.equal(encoder.embeddings.word_embeddings.weight, words)  # ITC's text side and ITG's output layer stay the init's
    assert not torch.equal(encoder.query_tokens, others)


def test_phase1_resumes_from_its_last_checkpoint(tiny_components, data_dir, tmp_path):
    pretrain(tiny_pretrain_config(tiny_components, data_dir, tmp_path, max_steps=2, eval_steps=0))
    first = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert first["global_step"] == 2
    results = pretrain(tiny_pretrain_config(tiny_components, data_dir, tmp_path, max_steps=4, eval_steps=0))
    steps = [e["step"] for e in results["log_history"] if "loss" in e]
    assert steps == [1, 2, 3, 4] and results["steps"] == 4  # steps 1-2 come from the resumed state, not a rerun


def test_phase2_from_phase1_trains_saves_and_loads_with_automodel(tiny_components, data_dir, phase1_dir, tmp_path):
    config = FinetuneConfig(
        data_dir=str(data_dir), output_dir=str(tmp_path), init=str(phase1_dir / "final"), llm=tiny_components["llm"], qformer=tiny_components["bert"],
        num_query_tokens=2, num_cf_tokens=2, num_train_examples=32, batch_size=4, max_steps=3, logging_steps=1, save_steps=2, learning_rate=1e-3,
    )
    summary = finetune(config)
    assert summary["steps"] == 3 and summary["examples"]["train"]["dropped_too_long"] == 0
    checkpoint = tmp_path / "checkpoint-2" / "model.safetensors"
    from safetensors import safe_open

    with safe_open(checkpoint, "pt") as f:
        assert not any(k.startswith("language_model.") for k in f.keys())  # checkpoints skip the frozen LLM
    model = AutoModel.from_pretrained(tmp_path / "model")
    phase1 = AutoModel.from_pretrained(phase1_dir / "final")
    assert not torch.equal(model.item_encoder.query_tokens, phase1.item_encoder.query_tokens)  # trained on
    base = model.language_model.state_dict()
    assert all(torch.equal(v, phase1.language_model.state_dict()[k]) for k, v in base.items())  # LLM untouched


def phase2_command(tiny_components, data_dir, phase1_dir, output_dir, tmp_path):
    """`python -m training.finetune` arguments for a tiny run shaped like the CPU preset (ranking
    head with history labels, shuffled length-grouped batches), 6 steps (1.5 epochs), a checkpoint every 2."""
    config = FinetuneConfig(
        data_dir=str(data_dir), output_dir=str(output_dir), init=str(phase1_dir / "final"), llm=tiny_components["llm"], qformer=tiny_components["bert"],
        num_query_tokens=2, num_cf_tokens=2, num_train_examples=16, batch_size=4, max_steps=6, logging_steps=1, save_steps=2, learning_rate=1e-3,
        ranking_head=True, ranking_tasks=["next_item_title"], ranking_history=True, ranking_negatives=8, shuffle_batches=True,
    )
    path = tmp_path / f"{Path(output_dir).name}.yaml"
    save_config(config, path)
    return ["--config", str(path)]


@pytest.fixture(scope="module")
def phase2_straight(tiny_components, data_dir, phase1_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    subprocess.run([sys.executable, "-m", "training.finetune", *phase2_command(tiny_components, data_dir, phase1_dir, tmp / "run", tmp)], check=True, capture_output=True)
    return load_file(str(tmp / "run" / "model" / "model.safetensors"))


def phase1_command(tiny_components, data_dir, output_dir, tmp_path):
    """`python -m training.pretrain` arguments: 6 steps over 3 epochs, a checkpoint every 2, dropout on."""
    config = tiny_pretrain_config(tiny_components, data_dir, output_dir, max_steps=6, eval_steps=0)
    path = tmp_path / f"{Path(output_dir).name}.yaml"
    save_config(config, path)
    return ["--config", str(path)]


@pytest.fixture(scope="module")
def phase1_straight(tiny_components, data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight1")
    subprocess.run([sys.executable, "-m", "training.pretrain", *phase1_command(tiny_components, data_dir, tmp / "run", tmp)], check=True, capture_output=True)
    return load_file(str(tmp / "run" / "final" / "model.safetensors"))


def killed_then_resumed(phase, command, where, step, run, final):
    """Kills `phase` with SIGKILL at `where` `step`, resumes it with the same command, and returns the
    final weights; the resume must start from the last complete checkpoint (2)."""
    module, name = {"phase1": ("training.pretrain", "phase 1"), "phase2": ("training.finetune", "phase 2")}[phase]
    killed = subprocess.run([sys.executable, str(Path(__file__).parent / "faults" / "kill_training.py"), phase, where, str(step), *command], capture_output=True)
    assert killed.returncode == -signal.SIGKILL and not final.exists()
    if where == "mid-save":  # the half-written checkpoint is there, and the resume must pass over it
        assert (run / f"checkpoint-{step}" / "model.safetensors").exists()
        assert not (run / f"checkpoint-{step}" / "trainer_state.json").exists()
    resumed = subprocess.run([sys.executable, "-m", module, *command], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming {name} from {run / 'checkpoint-2'}" in resumed.stderr
    return load_file(str(final / "model.safetensors"))


def max_difference(weights, reference):
    assert weights.keys() == reference.keys()
    return max(float((weights[k].float() - reference[k].float()).abs().max()) for k in weights)


@pytest.mark.parametrize("where, step", [("after-step", 3), ("mid-save", 4)])
def test_phase1_killed_then_resumed_ends_bit_identical(tiny_components, data_dir, phase1_straight, tmp_path, where, step):
    command = phase1_command(tiny_components, data_dir, tmp_path / "run", tmp_path)
    weights = killed_then_resumed("phase1", command, where, step, tmp_path / "run", tmp_path / "run" / "final")
    assert max_difference(weights, phase1_straight) == 0.0


@pytest.mark.parametrize("where, step", [("after-step", 3), ("mid-save", 4)])
def test_phase2_killed_then_resumed_ends_bit_identical(tiny_components, data_dir, phase1_dir, phase2_straight, tmp_path, where, step):
    command = phase2_command(tiny_components, data_dir, phase1_dir, tmp_path / "run", tmp_path)
    weights = killed_then_resumed("phase2", command, where, step, tmp_path / "run", tmp_path / "run" / "model")
    assert max_difference(weights, phase2_straight) == 0.0


def test_phase2_batches_group_examples_of_similar_length(tiny_components, data_dir, phase1_dir, tmp_path):
    def padded_fraction(group_by_length):
        config = FinetuneConfig(
            data_dir=str(data_dir), output_dir=str(tmp_path), init=str(phase1_dir / "final"), llm=tiny_components["llm"],
            num_query_tokens=2, num_cf_tokens=2, num_train_examples=64, batch_size=4, group_by_length=group_by_length,
        )
        trainer, processor, _ = build_trainer(config)
        train = trainer.train_dataset
        first = train[0]  # the length column is the tokenized length
        assert first["length"] == len(processor(messages=first["messages"], item_ids=first["item_ids"], user_ids=first["user_ids"], add_generation_prompt=False)["input_ids"][0])
        masks = [batch["attention_mask"] for batch in trainer.get_train_dataloader()]
        real = sum(int(m.sum()) for m in masks)
        assert real == sum(train["length"])  # every example once, none cut
        return 1 - real / sum(m.numel() for m in masks)

    grouped, random = padded_fraction(True), padded_fraction(False)
    assert grouped < 0.5 * random, (grouped, random)


def test_phase2_curriculum_puts_the_first_tasks_first_in_length_grouped_batches(tiny_components, data_dir, phase1_dir, tmp_path):
    first = ["item_title", "item_genres"]
    config = FinetuneConfig(
        data_dir=str(data_dir), output_dir=str(tmp_path), init=str(phase1_dir / "final"), llm=tiny_components["llm"],
        num_query_tokens=2, num_cf_tokens=2, num_train_examples=64, batch_size=4, curriculum=first,
    )

    def stages_and_padding(config):
        trainer, _, _ = build_trainer(config)
        assert trainer.args.train_sampling_strategy == "sequential"  # the Trainer keeps the order given
        masks = [batch["attention_mask"] for batch in trainer.get_train_dataloader()]
        assert sum(int(m.sum()) for m in masks) == sum(trainer.train_dataset["length"]) and len(trainer.train_dataset) == 64  # each once
        return [task in first for task in trainer.train_dataset["task"]], 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)

    in_first, grouped = stages_and_padding(config)
    assert 0 < sum(in_first) < len(in_first) and in_first == sorted(in_first, reverse=True)  # first stage, then the rest
    in_first_shuffled, shuffled = stages_and_padding(dataclasses.replace(config, group_by_length=False))
    assert sorted(in_first_shuffled) == sorted(in_first) and in_first_shuffled == sorted(in_first_shuffled, reverse=True)
    assert grouped < 0.5 * shuffled, (grouped, shuffled)
    with pytest.raises(ValueError, match="curriculum names tasks"):
        build_trainer(dataclasses.replace(config, curriculum=["no_such_task"]))


@pytest.mark.parametrize("asked, saved", [({"num_query_tokens": 3}, "num_query_tokens=2"), ({"cf_residual": True}, "cf_residual=False"), ({"num_hidden_layers": 7}, "num_hidden_layers=")])
def test_phase2_rejects_an_encoder_shape_unlike_its_phase1_init(tiny_components, data_dir, phase1_dir, tmp_path, asked, saved):
    values = dict(data_dir=str(data_dir), output_dir=str(tmp_path), init=str(phase1_dir / "final"), llm=tiny_components["llm"], num_query_tokens=2)
    config = FinetuneConfig(**{**values, **asked})
    with pytest.raises(ValueError, match=saved):
        finetune(config)


def test_phase2_from_scratch_builds_the_encoder_it_is_asked_for(tiny_components, data_dir, tmp_path):
    """ILM-rand must be the main job's encoder without phase 1: same depth, same CF residual."""
    config = FinetuneConfig(
        data_dir=str(data_dir), output_dir=str(tmp_path), init="scratch", llm=tiny_components["llm"], qformer=tiny_components["bert"],
        num_query_tokens=2, num_cf_tokens=2, num_hidden_layers=1, cf_residual=True,
    )
    model, _ = build_model_and_processor(config)
    assert model.config.cf_residual and model.config.qformer_config.num_hidden_layers == 1
    assert len(model.item_encoder.qformer.encoder.layer) == 1


def test_phase2_with_ranking_head_logs_its_loss_and_learning_curve_and_saves_the_head(tiny_components, data_dir, phase1_dir, tmp_path):
    config = FinetuneConfig(
        data_dir=str(data_dir), output_dir=str(tmp_path), init=str(phase1_dir / "final"), llm=tiny_components["llm"],
        num_query_tokens=2, num_cf_tokens=2, num_train_examples=32, batch_size=4, max_steps=4, logging_steps=1, save_steps=2,
        learning_rate=1e-3, ranking_head=True, ranking_negatives=8, task_weights={"next_item_title": 1, "item_title": 1},
        curve_steps=2, curve_users=5, item_rendering="title+tokens", ranking_warmup_steps=3, ranking_warmup_batch_size=8,
        ranking_pairs_per_step=4,
    )
    summary = finetune(config)
    assert summary["ranking_warmup"]["steps"] == 3 and summary["ranking_warmup"]["pairs"] > 0
    history = summary["log_history"]
    assert [e["step"] for e in history if "eval_validation_hr@1_head" in e] == [0, 2, 4]
    assert all(0.0 <= e["eval_validation_hr@1_head"] <= 1.0 for e in history if "eval_validation_hr@1_head" in e)
    assert any(e.get("loss_rank", 0) > 0 for e in history)  # next-item rows train the head
    assert sum("loss_pairs" in e for e in history) == 4 and all(e["loss_pairs"] > 0 for e in history if "loss_pairs" in e)  # every step
    model = AutoModel.from_pretrained(tmp_path / "model")
    assert model.config.ranking_head and model.item_scorer is not None
    from modeling_ilm import ILMProcessor

    assert ILMProcessor.from_pretrained(tmp_path / "model").item_rendering == "title+tokens"
    # run again: it resumes from the last checkpoint, whose head the warm-up already trained
    assert finetune(config)["ranking_warmup"] is None


# --- several processes, gradient accumulation, any TrainingArguments field ------------------------------


@pytest.fixture(scope="module")
def dropout_free_init(tiny_components, data_dir, tmp_path_factory):
    """A phase-1 checkpoint without dropout: runs that split one batch differently compute one function."""
    from safetensors.torch import load_file

    from modeling_ilm import ILMForItemTextPretraining

    cf = load_file(str(data_dir / "cf" / "embeddings.safetensors"))
    torch.manual_seed(0)
    model = ILMForItemTextPretraining.from_components(
        tiny_components["llm"], tiny_components["bert"], item_embeddings=cf["item_embeddings"], user_embeddings=cf["user_embeddings"],
        num_query_tokens=2, num_cf_tokens=2, qformer_config={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    )
    out = tmp_path_factory.mktemp("dropout_free")
    model.save_pretrained(out)
    return out


def equal_batch_config(tiny_components, data_dir, init, out, **overrides):
    """Phase 2 with the ranking head and its pair loss, where only the split of a global batch may
    differ between runs: examples in file order, every catalog item a ranking negative (the same set
    for any batch), the step's train pairs split over its micro-batches."""
    items = len(json.loads((data_dir / "catalog.json").read_text())["items"])
    values = dict(
        data_dir=str(data_dir), output_dir=str(out), init=str(init), llm=tiny_components["llm"], num_query_tokens=2, num_cf_tokens=2,
        num_train_examples=16, batch_size=4, max_steps=2, logging_steps=1, save_steps=1, learning_rate=1e-3, group_by_length=False,
        ranking_head=True, ranking_negatives=items, ranking_pairs_per_step=4, task_weights={"next_item_title": 1, "item_title": 1},
        training_args={"train_sampling_strategy": "sequential"},
    )
    return FinetuneConfig(**{**values, **overrides})


def first_logs(summary, steps=2):
    return [e for e in summary["log_history"] if "loss" in e and "grad_norm" in e][:steps]


def test_phase2_gradient_accumulation_trains_like_one_bigger_batch(tiny_components, data_dir, dropout_free_init, tmp_path):
    whole = first_logs(finetune(equal_batch_config(tiny_components, data_dir, dropout_free_init, tmp_path / "whole")))
    accumulated = first_logs(finetune(equal_batch_config(
        tiny_components, data_dir, dropout_free_init, tmp_path / "accumulated", batch_size=2, gradient_accumulation_steps=2
    )))
    assert len(whole) == len(accumulated) == 2
    for a, b in zip(whole, accumulated):  # same loss, same gradient: the micro-batches' means are re-weighted
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
        assert a["loss_rank"] > 0 and a["loss_pairs"] > 0


def test_phase2_encoder_learning_rate_scales_the_item_encoders_steps_only(tiny_components, data_dir, dropout_free_init, tmp_path):
    def changes(**overrides):  # each trained parameter's largest change over 2 steps (the first at warm-up rate 0)
        trainer, _, _ = build_trainer(equal_batch_config(tiny_components, data_dir, dropout_free_init, tmp_path / str(len(overrides)), **overrides))
        before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
        trainer.train()
        return {name: (p.detach() - before[name]).abs().max().item() for name, p in trainer.model.named_parameters() if name in before}

    full, low = changes(), changes(encoder_learning_rate=1e-5)  # learning_rate 1e-3: the encoder at 1/100
    encoder = [name for name in full if name.startswith("item_encoder.")]
    assert encoder and len(encoder) < len(full) and max(full[name] for name in encoder) > 0
    model = build_trainer(equal_batch_config(tiny_components, data_dir, dropout_free_init, tmp_path / "sizes"))[0].model
    for name, p in model.named_parameters():  # AdamW's step (and its weight decay) is linear in the rate
        if name in full:  # to float32's resolution at the weight's size (a LayerNorm weight near 1: ~1e-7)
            resolution = 4 * torch.finfo(torch.float32).eps * max(1.0, p.detach().abs().max().item())
            assert low[name] == pytest.approx(full[name] / 100 if name in encoder else full[name], rel=1e-3, abs=resolution), name
    with pytest.raises(ValueError, match="encoder_learning_rate must be > 0"):
        equal_batch_config(tiny_components, data_dir, dropout_free_init, tmp_path, encoder_learning_rate=0.0)


def test_compared_variants_read_the_main_jobs_encoder_and_ilm_rand_trains_it_at_the_full_rate():
    settings = {"pretrain": {"variant": "IT-II", "num_hidden_layers": 1, "keep_cf_length": True}, "finetune": {"encoder_learning_rate": 1e-4}}
    runs = phase2_runs(settings, Path("out"))
    assert set(runs) == {"ILM-rand", "MLP adapter", "ILM (IT)", "ILM (IT-UI)"}
    assert runs["ILM-rand"] == {"init": "scratch", "encoder_learning_rate": None, "num_hidden_layers": 1, "keep_cf_length": True}
    assert runs["MLP adapter"] == {"init": "scratch", "adapter_type": "mlp", "keep_cf_length": True}
    assert runs["ILM (IT)"] == {"init": str(Path("out") / "variants" / "phase1-IT" / "final")}  # the preset's own rate


def test_any_training_argument_passes_through_and_report_to_tensorboard_writes_events(tiny_components, data_dir, dropout_free_init, tmp_path):
    config = load_config(FinetuneConfig, {
        "data_dir": str(data_dir), "output_dir": str(tmp_path), "init": str(dropout_free_init), "llm": tiny_components["llm"],
        "num_query_tokens": 2, "num_cf_tokens": 2, "num_train_examples": 8, "batch_size": 4, "max_steps": 2, "logging_steps": 1,
    }, overrides=["report_to=tensorboard", "max_grad_norm=0.5"])
    assert config.training_args == {"report_to": "tensorboard", "max_grad_norm": 0.5}
    finetune(config)
    assert list(tmp_path.rglob("events.out.tfevents.*"))
    with pytest.raises(ValueError, match=r"unknown config keys \['no_such_field'\].*any TrainingArguments field"):
        load_config(FinetuneConfig, {}, overrides=["no_such_field=1"])
    if not torch.accelerator.is_available():  # accelerate would quietly run DDP instead of sharding
        for option in ("fsdp=full_shard", "deepspeed=ds_config.json"):
            sharded = load_config(FinetuneConfig, dataclasses.asdict(config), overrides=[option])
            with pytest.raises(ValueError, match=f"{option.split('=')[0]}=.* needs GPUs .* without it"):
                training_arguments(sharded)



def test_bf16_auto_follows_the_hardware_and_autocast_trains_like_float32(tiny_components, data_dir, dropout_free_init, tmp_path, monkeypatch):
    from training import assets

    config = equal_batch_config(tiny_components, data_dir, dropout_free_init, tmp_path / "float32")
    assert config.bf16 is False and training_arguments(config).bf16 is False  # exact unless asked (as TrainingArguments)
    for fast in (True, False):  # "auto": bfloat16 only where the device has bfloat16 units
        monkeypatch.setattr(assets, "fast_bfloat16", lambda device, fast=fast: fast)
        assert training_arguments(dataclasses.replace(config, bf16="auto")).bf16 is fast
    exact = first_logs(finetune(config))
    autocast = first_logs(finetune(dataclasses.replace(config, bf16=True, output_dir=str(tmp_path / "bfloat16"))))
    for a, b in zip(exact, autocast):  # bfloat16 rounding moves the loss a little, not the training
        assert b["loss"] == pytest.approx(a["loss"], rel=0.02) and b["loss"] != a["loss"]

@pytest.mark.slow
def test_phase2_on_two_processes_equals_one_process_and_only_rank_0_writes(tiny_components, data_dir, dropout_free_init, tmp_path):
    import subprocess
    import sys

    single = first_logs(finetune(equal_batch_config(tiny_components, data_dir, dropout_free_init, tmp_path / "one", batch_size=4)))
    config = equal_batch_config(tiny_components, data_dir, dropout_free_init, tmp_path / "two", batch_size=2)
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    script = Path(__file__).parent / "multiprocess" / "phase2_run.py"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path / "config.json")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    multi = first_logs(json.loads((tmp_path / "two" / "phase2_results.json").read_text()))
    for a, b in zip(single, multi):  # 2 processes x 2 rows = 1 process x 4 rows
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    assert not (tmp_path / "two" / "writes_by_rank_1.txt").exists()
    assert (tmp_path / "two" / "checkpoint-2" / "model.safetensors").exists() and (tmp_path / "two" / "model" / "config.json").exists()
