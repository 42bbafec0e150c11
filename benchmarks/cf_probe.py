"""What the raw CF vectors rank by themselves, on the quality ladder's users and candidates: the
signal an item encoder can keep, and what it loses if it drops each vector's length.

    python benchmarks/cf_probe.py --data runs/ladder/data [--split validation] [--users 200]

No training: each scorer reads the ALS tables of the data build and the user's last 10 history
items (the history the prompts show). Prints a table with 95% bootstrap CIs.
"""

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from datasets import load_from_disk
from safetensors.numpy import load_file

from training.evaluate.baselines import als_scorer
from training.evaluate.protocol import load_protocol
from training.evaluate.recommendation import ranking_section


def unit(vectors):
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def layer_norm(vectors):
    """What nn.LayerNorm (no affine) leaves of each vector: its length is gone."""
    centred = vectors - vectors.mean(-1, keepdims=True)
    return centred / np.maximum(centred.std(-1, keepdims=True), 1e-12)


def scorers(data_dir, protocol):
    cf = Path(data_dir) / "cf"
    items = load_file(str(cf / "embeddings.safetensors"))["item_embeddings"].astype(np.float64)
    row = {item_id: n for n, item_id in enumerate(json.loads((cf / "id_maps.json").read_text())["item_ids"])}
    log_length = np.log(np.maximum(np.linalg.norm(items, axis=-1), 1e-12))
    counts = Counter(load_from_disk(str(Path(data_dir) / "interactions" / "train"))["item_id"])

    def item_item(vectors, candidate_bonus=None, candidates_as=None):
        """Each candidate (as `candidates_as`, default `vectors`) against the mean of the history's `vectors`."""
        def score(user_id, candidates):
            rows = [row[c] for c in candidates]
            scores = (vectors if candidates_as is None else candidates_as)[rows] @ vectors[[row[i] for i in protocol.history(user_id)]].mean(0)
            return scores if candidate_bonus is None else scores + candidate_bonus[rows]
        return score

    return {
        "ALS user·item": als_scorer(data_dir),
        "mean cosine to the history": item_item(unit(items)),
        "mean cosine, layer-normalised vectors": item_item(unit(layer_norm(items))),
        "mean cosine + 0.1 x log length": item_item(unit(items), 0.1 * log_length),
        "cosine to the history's mean (candidates' lengths dropped)": item_item(items, candidates_as=unit(items)),
        "dot product with the history's mean": item_item(items),
        "log length alone": lambda user_id, candidates: log_length[[row[c] for c in candidates]],
        "popularity (train count)": lambda user_id, candidates: [counts.get(c, 0) for c in candidates],
    }, float(np.corrcoef(np.exp(log_length), np.log1p([counts.get(i, 0) for i in row]))[0, 1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/ladder/data")
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args(argv)
    protocol = load_protocol(args.data, split=args.split, users=args.users)
    found, correlation = scorers(args.data, protocol)
    print(f"{args.split}, first {len(protocol.users)} users, {protocol.num_candidates} candidates; "
          f"correlation of an item's ALS vector length with the log of its train count: {correlation:.2f}\n")
    print("| scorer | HR@1 | NDCG@5 |\n|---|---|---|")
    for name, score_fn in found.items():
        section = ranking_section(score_fn, protocol, desc=name)
        print(f"| {name} | " + " | ".join(f"{section[m]['value']:.3f} [{section[m]['ci95'][0]:.3f}, {section[m]['ci95'][1]:.3f}]" for m in ("hr@1", "ndcg@5")) + " |")


if __name__ == "__main__":
    main()
