"""The paper's comparison on one preset: phase-1 variants, then phase-2 variants and baselines.

    python -m training.compare --preset cpu --out runs/ml100k [--stage phase1|all]

Reuses what `training.main` left in `--out` (data, the IT-II phase 1 and phase 2, its evaluation)
and adds ILM-IT, ILM-IT-UI, ILM-rand (no phase 1) and the MLP adapter, each trained with the same
preset, evaluated on the same users and candidates. Every run resumes / is skipped when done.
Writes `variants/phase1.md` and `variants/results.{json,md}`.
"""

import argparse
import json
import logging
from pathlib import Path

from training.config import load_config
from training.finetune import FinetuneConfig, finetune
from training.main import evaluate_stage, load_preset
from training.pretrain import PretrainConfig, pretrain

PHASE1_VARIANTS = ("IT", "IT-II", "IT-UI")


def phase1_dir(out, variant, main_variant):
    return out / "phase1" if variant == main_variant else out / "variants" / f"phase1-{variant}"


def run_phase1(settings, out):
    main_variant = settings["pretrain"].get("variant", "IT-II")
    rows = {}
    for variant in PHASE1_VARIANTS:
        folder = phase1_dir(out, variant, main_variant)
        if not (folder / "phase1_results.json").exists():
            values = {**settings["pretrain"], "variant": variant, "data_dir": str(out / "data"), "output_dir": str(folder)}
            pretrain(load_config(PretrainConfig, values))
        rows[variant] = json.loads((folder / "phase1_results.json").read_text())
    first = next(iter(rows.values()))
    lines = [
        "| phase 1 | item->text R@1 | item->text R@10 | item-item R@10 | held-out ITG loss | steps | time s |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, result in rows.items():
        m = result["metrics"]
        lines.append(f"| ILM-{variant} | {m['item_text_recall@1']:.4f} | {m['item_text_recall@10']:.4f} | {m['item_item_recall@10']:.4f} | {m['itg_loss']:.3f} | {result['steps']} | {result['time_s']} |")
    lines.append(f"| raw ALS vectors (cosine) | - | - | {first['als_item_item']['recall@10']:.4f} | - | - | - |")
    chance10 = first["chance_recall@10"]  # 10 / catalog size
    lines.append(f"| chance | {chance10 / 10:.4f} | {chance10:.4f} | {chance10:.4f} | - | - | - |")
    table = "\n".join(lines)
    (out / "variants").mkdir(parents=True, exist_ok=True)
    (out / "variants" / "phase1.md").write_text(table + "\n")
    print(table)
    return rows


def phase2_runs(settings, out):
    """Row name -> phase-2 overrides of every variant but the main job's own."""
    main_variant = settings["pretrain"].get("variant", "IT-II")
    # ILM-rand: the main job's encoder (its depth, CF residual and CF scaling) built fresh instead of from
    # phase 1, at the full learning rate (it has no phase 1 to keep); the MLP adapter reads the CF vectors scaled alike
    encoder = {key: settings["pretrain"][key] for key in ("num_hidden_layers", "cf_residual", "keep_cf_length") if key in settings["pretrain"]}
    cf_input = {key: settings["pretrain"][key] for key in ("keep_cf_length",) if key in settings["pretrain"]}
    runs = {"ILM-rand": {"init": "scratch", "encoder_learning_rate": None, **encoder}, "MLP adapter": {"init": "scratch", "adapter_type": "mlp", **cf_input}}
    runs |= {f"ILM ({v})": {"init": str(phase1_dir(out, v, main_variant) / "final")} for v in PHASE1_VARIANTS if v != main_variant}
    return runs


def run_phase2(settings, out, rows=None, sections=None):
    from training.evaluate import merge_results, write_report

    runs = {name: extra for name, extra in phase2_runs(settings, out).items() if rows is None or name in rows}
    results = [json.loads((out / "eval" / "results.json").read_text())]  # main job: baselines + ILM (main variant)
    for name, extra in runs.items():
        slug = name.lower().replace(" ", "-").replace("(", "").replace(")", "")
        folder = out / "variants" / f"phase2-{slug}"
        if not (folder / "phase2_results.json").exists():
            # the learning curve is the main job's; variants skip it
            values = {**settings["finetune"], "curve_steps": 0, **extra, "name": name, "data_dir": str(out / "data"), "output_dir": str(folder)}
            finetune(load_config(FinetuneConfig, values))
        eval_settings = {**settings.get("evaluate", {}), "baselines": [], **({"sections": sections} if sections else {})}
        results.append(evaluate_stage(eval_settings, folder / "model", out / "data", folder / "eval", name))
    merged = merge_results(results)
    write_report(merged, out / "variants")
    print((out / "variants" / "results.md").read_text())
    return merged


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--out", default="runs/ml100k")
    parser.add_argument("--stage", choices=("phase1", "all"), default="all")
    parser.add_argument("--rows", help="comma list of phase-2 rows (default: all): ILM-rand,MLP adapter,ILM (IT),ILM (IT-UI)")
    parser.add_argument("--sections", help="comma list of evaluation sections for the variants (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings, out = load_preset(args.preset), Path(args.out)
    rows = args.rows.split(",") if args.rows else None
    if rows is None or any(name.startswith("ILM (") for name in rows):
        run_phase1(settings, out)
    if args.stage == "all":
        run_phase2(settings, out, rows, args.sections.split(",") if args.sections else None)


if __name__ == "__main__":
    main()
