"""ILM evaluation metrics as a Hugging Face `evaluate` module.

Self-contained on purpose: `evaluate.load(path_to_this_file, config_name)` copies it into the
modules cache and imports it from there (see `training/evaluate/metrics.py`).

Configs:
- "ranking": predictions = each user's candidate scores, references = index of the true item.
  The true item's rank is the number of OTHER candidates scoring >= it (ties count against it),
  so the result never depends on the order of the candidates. HR@k = rank < k;
  NDCG@k = 1 / log2(rank + 2) when rank < k, else 0 (one relevant item, so IDCG = 1).
- "choice": predictions = the item id a generated answer names ("" when it names none),
  references = the true item id. valid_ratio, hr@1 (all users), hr@1_valid (users with a valid answer).
- "exact_match": string equality (callers normalise first).
- "set_f1": F1 between comma-separated sets, case and surrounding spaces ignored.

`per_example=True` returns one value per example (NaN where undefined, e.g. hr@1_valid of an
invalid answer) instead of the means: the harness bootstraps confidence intervals from those.
"""

import datasets
import evaluate
import numpy as np

FEATURES = {
    "ranking": {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")},
    "choice": {"predictions": datasets.Value("string"), "references": datasets.Value("string")},
    "exact_match": {"predictions": datasets.Value("string"), "references": datasets.Value("string")},
    "set_f1": {"predictions": datasets.Value("string"), "references": datasets.Value("string")},
}


def rank_of(scores, true):
    scores = np.asarray(scores, dtype=float)
    if np.isnan(scores[true]):  # a failed score is a miss, never a hit
        return len(scores)
    return int((scores >= scores[true]).sum()) - 1


def ranking(predictions, references, k=(1, 5, 10)):
    ranks = np.array([rank_of(scores, true) for scores, true in zip(predictions, references)])
    out = {}
    for cut in k:
        out[f"hr@{cut}"] = (ranks < cut).astype(float)
        out[f"ndcg@{cut}"] = np.where(ranks < cut, 1.0 / np.log2(ranks + 2.0), 0.0)
    return out


def choice(predictions, references, k=None):
    valid = np.array([p != "" for p in predictions], dtype=float)
    hit = np.array([p == r for p, r in zip(predictions, references)], dtype=float)
    return {"valid_ratio": valid, "hr@1": hit, "hr@1_valid": np.where(valid > 0, hit, np.nan)}


def exact_match(predictions, references, k=None):
    return {"exact_match": np.array([p == r for p, r in zip(predictions, references)], dtype=float)}


def _as_set(text):
    return {part.strip().lower() for part in text.split(",") if part.strip()}


def set_f1(predictions, references, k=None):
    scores = []
    for p, r in zip(predictions, references):
        p, r = _as_set(p), _as_set(r)
        scores.append(1.0 if not p and not r else 2 * len(p & r) / (len(p) + len(r)))
    return {"f1": np.array(scores)}


class IlmMetrics(evaluate.Metric):
    def _info(self):
        if self.config_name not in FEATURES:
            raise ValueError(f"config_name={self.config_name!r}; use one of {sorted(FEATURES)}.")
        return evaluate.MetricInfo(
            description="Recommendation (HR@k, NDCG@k, valid ratio) and answer-matching metrics of the ILM harness.",
            citation="",
            inputs_description=__doc__,
            features=datasets.Features(FEATURES[self.config_name]),
        )

    def _compute(self, predictions, references, k=(1, 5, 10), per_example=False):
        values = globals()[self.config_name](predictions, references, k=k)
        if per_example:
            return values
        return {name: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for name, v in values.items()}
