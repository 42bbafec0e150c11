"""The quality ladder: one phase-2 run per lever, all ranked on the VALIDATION split.

    python benchmarks/quality.py --out runs/ladder            # every row (≈ 8-12 min of CPU each)
    python benchmarks/quality.py --out runs/ladder --rows head,head_rec

Every row starts from the same phase-1 checkpoint (the CPU preset's, built in `--out` when absent)
and is evaluated on the same first 200 validation users and the same 20 candidates, with 95%
bootstrap CIs (resampled identically for every row, so rows compare paired). Popularity, ALS and
the text-only LLM are evaluated on that protocol too. The test split is never looked at here: the
chosen configuration is evaluated on it once, by `make main`.

Writes `--out/ladder.json`, `benchmarks/quality.md` (the table, with the minutes each row cost) and
`benchmarks/learning_curve.png` (validation HR@1 of the ranking head against phase-2 steps).
"""

import argparse
import json
import logging
import time
from pathlib import Path

import yaml

HERE = Path(__file__).parent
PRESET = HERE.parent / "training" / "configs" / "cpu.yaml"
RECOMMENDATION_HEAVY = {
    "item_title": 1, "item_genres": 0.5, "item_year": 0.5, "next_item_title": 6, "candidate_selection": 1,
    "user_profile": 0.25, "user_rating": 0.25, "similar_item": 1, "conversation": 0.5,
}
# name -> (what the row adds, phase-2 overrides on top of the CPU preset's finetune section)
ROWS = {
    "preset": ("the CPU preset as shipped (ranking head, next-item labels at every history item)", {}),
    "tokens": ("ILM, bare item tokens, likelihood ranking (the previous preset)", {"ranking_head": False}),
    "head": ("+ ranking head (E4SRec-style), same data and steps", {"ranking_head": True}),
    "head_rec": ("+ recommendation-heavy task mix (next-item prompts, short)", {"ranking_head": True, "task_weights": RECOMMENDATION_HEAVY}),
    "head_rec_lr": (
        "+ learning rate 1e-3 (from 3e-4)",
        {"ranking_head": True, "task_weights": RECOMMENDATION_HEAVY, "learning_rate": 1.0e-3},
    ),
    "head_hist": (
        "+ every history item predicts the next (SASRec-style ranking labels)",
        {"ranking_head": True, "task_weights": RECOMMENDATION_HEAVY, "ranking_history": True},
    ),
    "head_rec_long": (
        "+ 2x the phase-2 examples and steps",
        {"ranking_head": True, "task_weights": RECOMMENDATION_HEAVY, "num_train_examples": 1920, "max_steps": 240},
    ),
}
EVAL_SECTIONS = ["ranking", "ranking_mean", "ranking_calibrated", "ranking_head"]
METRICS = [
    ("HR@1 (likelihood, sum)", "ranking", "hr@1"),
    ("HR@1 (likelihood, mean)", "ranking_mean", "hr@1"),
    ("HR@1 (likelihood, calibrated)", "ranking_calibrated", "hr@1"),
    ("HR@1 (ranking head)", "ranking_head", "hr@1"),
    ("NDCG@5 (ranking head)", "ranking_head", "ndcg@5"),
    ("HR@10 (head, full catalog)", "ranking_head", "full_catalog_hr@10"),
]


def phase1(out: Path, preset: dict) -> Path:
    from training.config import load_config
    from training.data import build_dataset
    from training.pretrain import PretrainConfig, pretrain

    if not (out / "data" / "stats.json").exists():
        build_dataset(out / "data", dataset="ml-100k", **{k: v for k, v in preset["data"].items() if k != "dataset"})
    if not (out / "phase1" / "phase1_results.json").exists():
        pretrain(load_config(PretrainConfig, {**preset["pretrain"], "data_dir": str(out / "data"), "output_dir": str(out / "phase1")}))
    return out / "phase1" / "final"


def run_row(name: str, out: Path, preset: dict, init: Path, users: int, trained: Path | None = None) -> dict:
    """Trains the row's phase 2 (or takes the already trained phase-2 folder `trained`, e.g. the
    main job's `runs/ml100k/phase2` for the "preset" row) and evaluates it on validation."""
    from modeling_ilm import ILMForConditionalGeneration, ILMProcessor
    from training.config import load_config
    from training.evaluate import evaluate_model
    from training.finetune import FinetuneConfig, finetune

    row_dir = out / name
    if (row_dir / "row.json").exists():
        return json.loads((row_dir / "row.json").read_text())
    overrides = ROWS[name][1]
    values = {**preset["finetune"], **overrides, "data_dir": str(out / "data"), "output_dir": str(row_dir), "init": str(init), "name": name}
    if overrides.get("ranking_head"):
        values.setdefault("curve_steps", max(1, values["max_steps"] // 4))
    start = time.time()
    if trained is None:
        summary = finetune(load_config(FinetuneConfig, values))
    else:
        row_dir = trained
        summary = json.loads((trained / "phase2_results.json").read_text())
    train_s = summary["time_s"]
    model = ILMForConditionalGeneration.from_pretrained(row_dir / "model").eval()
    processor = ILMProcessor.from_pretrained(row_dir / "model")
    start = time.time()
    results = evaluate_model(model, processor, out / "data", name=name, split="validation", users=users, sections=EVAL_SECTIONS)
    row = {
        "name": name,
        "adds": ROWS[name][0],
        "overrides": overrides,
        "phase2_min": round(train_s / 60, 1),
        "eval_min": round((time.time() - start) / 60, 1),
        "tokens_per_s": summary["train_tokens_per_second"],
        "results": results["models"][name],
        "curve": [e for e in summary["log_history"] if "eval_validation_hr@1_head" in e],
    }
    (out / name).mkdir(parents=True, exist_ok=True)
    (out / name / "row.json").write_text(json.dumps(row, indent=2))
    return row


def baselines(out: Path, users: int) -> dict:
    from training.evaluate import evaluate_baselines

    path = out / "baselines.json"
    if not path.exists():
        results = evaluate_baselines(out / "data", split="validation", users=users, sections=EVAL_SECTIONS[:3])
        path.write_text(json.dumps(results["models"], indent=2))
    return json.loads(path.read_text())


def cell(results: dict, section: str, metric: str) -> str:
    value = results.get(section, {}).get(metric)
    if not value or value["value"] is None:
        return "–"
    ci = value.get("ci95")
    return f"{value['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value['value']:.3f}"


def write_report(rows: list, base: dict, users: int):
    lines = [
        "# Quality ladder (validation split)",
        "",
        f"`python benchmarks/quality.py` on 2 CPU cores: ml-100k, CPU preset, the first {users} validation users, "
        "20 candidates each (the held-out item + 19 never-seen items), 95% bootstrap CIs. Every row starts from the "
        "same phase-1 checkpoint; choices are made on this table, the test split is evaluated once (README).",
        "",
        "| row | what it adds | " + " | ".join(m[0] for m in METRICS) + " | phase 2 (min) | eval (min) |",
        "|---|---|" + "---|" * (len(METRICS) + 2),
    ]
    names = {"pop": "Popularity", "als": "ALS (user·item)", "text": "text-only SmolLM2-135M"}
    for key, label in names.items():
        if key in base:
            lines.append(f"| {label} | baseline | " + " | ".join(cell(base[key], s, m) for _, s, m in METRICS) + " | – | – |")
    for row in rows:
        cells = " | ".join(cell(row["results"], s, m) for _, s, m in METRICS)
        lines.append(f"| {row['name']} | {row['adds']} | {cells} | {row['phase2_min']} | {row['eval_min']} |")
    curves = [row for row in rows if row["curve"]]
    if curves:
        lines += ["", "Learning curve (validation HR@1 of the ranking head against phase-2 steps): `learning_curve.png`", ""]
        for row in curves:
            points = ", ".join(f"{e['step']}: {e['eval_validation_hr@1_head']:.3f}" for e in row["curve"])
            lines.append(f"- {row['name']}: {points}")
        plot_curves(curves, HERE / "learning_curve.png")
    (HERE / "quality.md").write_text("\n".join(lines) + "\n")


def plot_curves(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        steps = [e["step"] for e in row["curve"]]
        ax.plot(steps, [e["eval_validation_hr@1_head"] for e in row["curve"]], marker="o", label=row["name"])
    ax.set(xlabel="phase-2 step (batch 8)", ylabel="validation HR@1 (ranking head, 20 candidates)", title="Learning curve")
    ax.axhline(0.05, color="grey", linestyle=":", label="chance")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ladder")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {','.join(ROWS)}")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--preset-run", help="phase-2 folder already trained with the preset (e.g. runs/ml100k/phase2) for the 'preset' row")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    preset = yaml.safe_load(PRESET.read_text())
    init = phase1(out, preset)
    base = baselines(out, args.users)
    trained = {"preset": Path(args.preset_run)} if args.preset_run else {}
    rows = [run_row(name, out, preset, init, args.users, trained.get(name)) for name in args.rows.split(",")]
    write_report(rows, base, args.users)
    print((HERE / "quality.md").read_text())


if __name__ == "__main__":
    main()
