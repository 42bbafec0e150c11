"""Evaluation harness of the ILM: recommendation (20-candidate protocol, likelihood ranking and
generation, full-catalog generation), language alignment, language preservation, with baselines
(popularity, ALS, text-only prompting of the frozen LLM) and bootstrap confidence intervals.

CLI: python -m training.evaluate --model DIR --data DIR [--baselines pop,als,text] --out DIR
"""

from .harness import BASELINES, SECTIONS, evaluate_baselines, evaluate_model
from .protocol import Protocol, load_protocol
from .report import load_results, merge_results, to_markdown, write_report

__all__ = [
    "BASELINES",
    "SECTIONS",
    "Protocol",
    "evaluate_baselines",
    "evaluate_model",
    "load_protocol",
    "load_results",
    "merge_results",
    "to_markdown",
    "write_report",
]
