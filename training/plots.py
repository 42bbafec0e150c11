"""Training curves from a Trainer's log history, as a PNG a person can look at."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curves(log_history, path, title):
    """Left: every training loss by step; right: every evaluation metric by step."""
    train = [entry for entry in log_history if "loss" in entry and "step" in entry]
    evals = [entry for entry in log_history if any(k.startswith("eval_") for k in entry)]
    losses = sorted({k for entry in train for k in entry if k == "loss" or k.startswith("loss_")})
    metrics = sorted({k for entry in evals for k in entry if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in losses:
        points = [(e["step"], e[name]) for e in train if name in e]
        left.plot(*zip(*points), label=name, linewidth=2 if name == "loss" else 1)
    left.set(xlabel="step", ylabel="loss", title=f"{title}: training losses")
    left.legend(fontsize=8)
    for name in metrics:
        points = [(e["step"], e[name]) for e in evals if name in e]
        right.plot(*zip(*points), marker="o", label=name.removeprefix("eval_"))
    right.set(xlabel="step", title=f"{title}: evaluation")
    if metrics:
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
