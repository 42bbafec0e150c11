"""Per-example metric values (from the `evaluate` module in ilm_metrics.py) and percentile-bootstrap
95% confidence intervals over them."""

import functools
from pathlib import Path

import evaluate
import numpy as np

METRIC_SCRIPT = Path(__file__).with_name("ilm_metrics.py")


@functools.cache
def load_metric(config_name: str):
    """The harness's `evaluate` metric module for one config ("ranking", "choice", "exact_match", "set_f1")."""
    return evaluate.load(str(METRIC_SCRIPT), config_name, keep_in_memory=True)


def per_example(config_name: str, predictions, references, **kwargs) -> dict:
    """{metric name: np.ndarray with one value per example} (NaN where undefined)."""
    if not len(predictions):
        raise ValueError(f"No examples to compute {config_name!r} metrics on.")
    return load_metric(config_name).compute(predictions=predictions, references=references, per_example=True, **kwargs)


def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap CI of the mean of `values` (NaNs are left out of every mean).

    The resampling indices depend only on (seed, len(values)), so two models evaluated on the
    same users are resampled identically (a paired comparison). None when n_boot is 0.
    """
    values = np.asarray(values, dtype=float)
    if n_boot <= 0 or not np.isfinite(values).any():
        return None
    idx = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    sample = values[idx]
    finite = np.isfinite(sample)
    counts = finite.sum(1)
    means = np.where(finite, sample, 0.0).sum(1)[counts > 0] / counts[counts > 0]
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return [float(lo), float(hi)]


def summarize(values, n_boot: int = 1000, seed: int = 0) -> dict:
    """{"value": mean, "ci95": [lo, hi]} as results.json stores every metric."""
    values = np.asarray(values, dtype=float)
    value = float(np.nanmean(values)) if np.isfinite(values).any() else None
    return {"value": value, "ci95": bootstrap_ci(values, n_boot, seed)}


def summarize_all(values: dict, names: dict, n_boot: int = 1000, seed: int = 0) -> dict:
    """names: {key in results.json: key in `values`} -> {key: summarize(values[...])}."""
    return {out: summarize(values[name], n_boot, seed) for out, name in names.items()}
