"""Paired comparison of rankers on the same users and candidates: per-user HR@1 of each, and a
bootstrap CI of every difference against the first ranker (the same resampled users for both
sides, so the CI is of the difference itself, narrower than two overlapping CIs suggest).

    python benchmarks/paired.py --data runs/ml100k/data --model ILM=runs/ml100k/model \\
        --model ILM-rand=runs/ml100k/variants/phase2-ilm-rand/model --split test

Rankers: each `--model NAME=DIR`'s ranking head (from the next-item prompt, as `make main`'s
evaluation), then ALS (user·item) and popularity. The first `--model` is the reference.
"""

import argparse

from training import assets
from training.evaluate.baselines import als_scorer, popularity_scorer
from training.evaluate.lm import ChatModel
from training.evaluate.metrics import bootstrap_ci
from training.evaluate.protocol import load_protocol
from training.evaluate.recommendation import head_scorer, ranking_values


def ilm_head(model_dir, protocol, dtype_name):
    from modeling_ilm import ILMForConditionalGeneration, ILMProcessor

    device = assets.device()
    model = assets.inference_model(ILMForConditionalGeneration.from_pretrained(model_dir), device, assets.dtype(dtype_name, device))
    return head_scorer(ChatModel(model, ILMProcessor.from_pretrained(model_dir)), protocol)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=DIR", help="an ILM with a ranking head (repeatable)")
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--dtype", default="auto", help="the frozen LLM's precision (evaluate.dtype of the presets)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)
    models = [item.split("=", 1) for item in args.model]
    if any(len(item) != 2 for item in models):
        parser.error("--model takes NAME=DIR")
    if args.bootstrap < 1:
        parser.error("--bootstrap: give at least 1 resample (1000 for the README's CIs)")
    protocol = load_protocol(args.data, split=args.split, users=args.users)
    rankers = {f"{name} (ranking head)": ilm_head(folder, protocol, args.dtype) for name, folder in models}
    rankers |= {"ALS (user·item)": als_scorer(args.data), "Popularity": popularity_scorer(args.data)}
    hits = {name: ranking_values(score_fn, protocol, k=(1,), desc=name)["hr@1"] for name, score_fn in rankers.items()}  # per user
    reference, first = next(iter(hits.items()))
    print(f"{args.split} split, {len(protocol.users)} users, {protocol.num_candidates} candidates each; differences paired over users\n")
    print(f"| ranker | HR@1 | 95% CI | {reference} minus ranker | 95% CI of the difference |")
    print("|---|---|---|---|---|")
    for name, values in hits.items():
        ci, diff = bootstrap_ci(values, args.bootstrap), first - values
        diff_ci = bootstrap_ci(diff, args.bootstrap) if name != reference else None
        row = f"| {name} | {values.mean():.3f} | [{ci[0]:.3f}, {ci[1]:.3f}] | "
        print(row + (f"{diff.mean():+.3f} | [{diff_ci[0]:+.3f}, {diff_ci[1]:+.3f}] |" if diff_ci else "– | – |"))


if __name__ == "__main__":
    main()
