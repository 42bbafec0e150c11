"""The README's main job end to end on the real default assets (SmolLM2, MiniLM, ml-100k), with a
couple of steps per phase and four evaluated users, then run again to check that it resumes."""

import json

import pytest
import yaml

from modeling_ilm import ILMForConditionalGeneration
from training.main import run

pytestmark = pytest.mark.slow

STAGES = ["assets", "data + CF", "phase 1", "phase 2", "evaluation", "model folder + card", "demo"]
TINY_PRESET = {
    "data": {"dataset": "ml-100k", "seed": 0},
    "pretrain": {"variant": "IT-II", "num_query_tokens": 2, "num_cf_tokens": 2, "num_hidden_layers": 1, "max_text_length": 16,
                 "batch_size": 4, "max_steps": 2, "eval_steps": 2, "save_steps": 2, "eval_items": 8},
    "finetune": {"num_query_tokens": 2, "num_cf_tokens": 2, "task_weights": {"item_title": 1, "next_item_title": 1},
                 "num_train_examples": 8, "batch_size": 4, "max_steps": 2, "save_steps": 2,
                 "ranking_head": True, "ranking_tasks": ["next_item_title"], "ranking_history": True, "curve_steps": 2, "curve_users": 4},
    "evaluate": {"users": 4, "alignment_rows": 3, "bootstrap": 20, "baselines": ["pop"]},
}


def test_main_job_writes_a_loadable_model_with_card_and_resumes(tmp_path, capsys):
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(TINY_PRESET))
    out = tmp_path / "run"
    first = run(str(preset), str(out))
    assert list(first["timings"]) == STAGES
    assert list(first["results"]["models"]) == ["pop", "ILM (IT-II)"] and first["results"]["protocol"]["users"] == 4
    assert set(first["results"]["models"]["ILM (IT-II)"]) >= {"ranking", "ranking_head", "generation", "generation_constrained", "alignment"}

    model_dir = out / "model"
    card = (model_dir / "README.md").read_text()
    assert "ILM (IT-II)" in card and "| pop |" in card
    info = json.loads((model_dir / "training_info.json").read_text())
    assert info["preset"] == TINY_PRESET and info["phase2"]["steps"] == 2
    model = ILMForConditionalGeneration.from_pretrained(model_dir)
    assert model.item_scorer is not None and model.config.num_query_tokens == 2
    printed = capsys.readouterr().out
    assert printed.count("ranking head top 5") == 2 and "| total |" in printed

    # a second run finds every stage's output and redoes nothing
    second = run(str(preset), str(out))
    assert second["results"] == first["results"]
    assert second["timings"]["phase 1"] < 1 and second["timings"]["phase 2"] < 1 and second["timings"]["evaluation"] < 1
