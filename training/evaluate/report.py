"""results.json / results.md, and merging the results of separate runs into one table.

results.json:
{"protocol": {"name": "20-candidate", "num_candidates": 20, "split": "test", "users": N,
              "candidates_file": "...", "history_len": 10, "bootstrap": 1000, "seed": 0},
 "models": {"<name>": {"ranking": {"hr@1": {"value": v, "ci95": [lo, hi]}, "ndcg@5": ...},
                       "ranking_mean": {"hr@1", "ndcg@5"}, "ranking_calibrated": {"hr@1", "ndcg@5"},
                       "ranking_head": {"hr@1", "ndcg@5", "full_catalog_hr@10", "full_catalog_ndcg@10"},
                       "generation": {"valid_ratio", "hr@1", "hr@1_valid"},
                       "generation_constrained": {"valid_ratio", "hr@1", "hr@1_valid"},
                       "full_catalog": {"exact_title_hit", "hr@10", "ndcg@10"},
                       "alignment": {"seen": {"title_exact_match", "genre_f1", "year_accuracy",
                                              "semantic_consistency"}, "unseen": {...}},
                       "preservation": {"max_abs_logit_diff": float},
                       "timing_s": float, "dtype": "float32" | "bfloat16"}}}
Sections that do not apply to a model are absent (popularity has only "ranking", ranking_head
needs an ILM with a ranking head); ci95 is null when --bootstrap 0. A text baseline read from the
cache (cache.py) has the timing_s of the run that computed it. dtype is the LLM's weights' precision
(models scored in bfloat16 and float32 differ by a few 0.1 nats per answer; compare rows of one dtype).
"""

import json
from pathlib import Path

from training.atomic import write_text_atomic
from training.data.templates import ITEM_TOKEN, items, shown_entity

ALIGNMENT = {"title_exact_match": "title EM", "genre_f1": "genre F1", "year_accuracy": "year acc.", "semantic_consistency": "semantic"}
TABLES = {
    "Recommendation": [
        ("HR@1 (ranking)", ("ranking", "hr@1")),
        ("NDCG@5 (ranking)", ("ranking", "ndcg@5")),
        ("HR@1 (ranking, mean)", ("ranking_mean", "hr@1")),
        ("NDCG@5 (ranking, mean)", ("ranking_mean", "ndcg@5")),
        ("HR@1 (ranking, calibrated)", ("ranking_calibrated", "hr@1")),
        ("NDCG@5 (ranking, calibrated)", ("ranking_calibrated", "ndcg@5")),
        ("HR@1 (ranking head)", ("ranking_head", "hr@1")),
        ("NDCG@5 (ranking head)", ("ranking_head", "ndcg@5")),
        ("HR@10 (ranking head, full catalog)", ("ranking_head", "full_catalog_hr@10")),
        ("valid ratio (generation)", ("generation", "valid_ratio")),
        ("HR@1 (generation)", ("generation", "hr@1")),
        ("HR@1 of valid (generation)", ("generation", "hr@1_valid")),
        ("valid ratio (constrained generation)", ("generation_constrained", "valid_ratio")),
        ("HR@1 (constrained generation)", ("generation_constrained", "hr@1")),
        ("exact title hit (full catalog)", ("full_catalog", "exact_title_hit")),
        ("HR@10 (full catalog)", ("full_catalog", "hr@10")),
        ("NDCG@10 (full catalog)", ("full_catalog", "ndcg@10")),
    ],
    "Language alignment (held-out items)": [
        (f"{label} ({kind})", ("alignment", kind, key)) for kind in ("seen", "unseen") for key, label in ALIGNMENT.items()
    ],
    "Preservation and cost": [
        ("max abs logit diff vs base LLM", ("preservation", "max_abs_logit_diff")),
        ("time (s)", ("timing_s",)),
        ("weights dtype", ("dtype",)),
    ],
}


def load_results(path) -> dict:
    results = json.loads(Path(path).read_text())
    if not isinstance(results, dict) or not {"protocol", "models"} <= set(results):
        raise ValueError(f"{path}: not a results.json (needs 'protocol' and 'models').")
    return results


def merge_results(results) -> dict:
    """One results dict from several (dicts or results.json paths) on the same protocol.

    A model found in several results keeps the union of its sections (e.g. alignment evaluated in a
    separate run), their times added; the same section twice is an error."""
    results = [load_results(r) if isinstance(r, (str, Path)) else r for r in results]
    if not results:
        raise ValueError("Nothing to merge.")
    merged = {"protocol": results[0]["protocol"], "models": {}}
    for r in results[1:]:
        differ = {k for k in merged["protocol"].keys() | r["protocol"].keys() if not same_setting(k, merged["protocol"].get(k), r["protocol"].get(k))}
        if differ:
            raise ValueError(f"Results were computed on different protocols (differ in {sorted(differ)}); they are not comparable.")
    for r in results:
        for name, values in r["models"].items():
            model = merged["models"].setdefault(name, {})
            twice = {k for k in model.keys() & values.keys() if k != "timing_s" and not (k == "dtype" and model[k] == values[k])}
            if twice:
                raise ValueError(f"Model {name!r} has sections {sorted(twice)} in two results; rename one (--name).")
            timing = model.get("timing_s", 0) + values.get("timing_s", 0)
            model.update(values)
            if "timing_s" in model:
                model["timing_s"] = round(timing, 1)
    return merged


def same_setting(key, a, b) -> bool:
    """Protocol values compare as equal; a candidates file also when two paths name the same file
    (a relative and an absolute path, say), or files with the same bytes."""
    if a == b:
        return True
    if key != "candidates_file" or a is None or b is None:
        return False
    a, b = Path(a), Path(b)
    return a.is_file() and b.is_file() and (a.resolve() == b.resolve() or a.read_bytes() == b.read_bytes())


def lookup(values, path):
    for key in path:
        if not isinstance(values, dict) or key not in values:
            return None
        values = values[key]
    return values


def cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, dict):
        if value["value"] is None:
            return "–"
        ci = value.get("ci95")
        return f"{value['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    return value if isinstance(value, str) else f"{value:g}"


def shown_candidate(protocol: dict) -> str:
    """How the protocol's candidate prompts list one candidate (its options are in `protocol` only when set)."""
    ref = items("1", titled=protocol.get("candidate_titles", False),
                tokens=protocol.get("candidate_tokens", True), tokens_first=protocol.get("candidate_tokens_first", False),
                spaced=protocol.get("candidate_title_space", True))
    return shown_entity(ref, "1", ITEM_TOKEN, {"1": "Heat (1995)"})


def protocol_note(protocol: dict) -> str:
    n = protocol["num_candidates"]
    ci = f"percentile bootstrap over users ({protocol['bootstrap']} resamples, seed {protocol['seed']})" if protocol["bootstrap"] else "none (--bootstrap 0)"
    return "\n".join([
        f"**Protocol** ({protocol['name']}): split `{protocol['split']}`, {protocol['users']} users, {n} candidates per user "
        f"from `{protocol['candidates_file']}` (the held-out item and items the user never interacted with), shown "
        f"in a seeded random order, each listed to the ILM as `{shown_candidate(protocol)}` (to the text-only LLM by its "
        f"title); the history is the user's last {protocol['history_len']} earlier interactions.",
        "",
        "- *ranking*: LLMs rank the candidates by their log-likelihood of each title as the answer, summed over "
        "the title's tokens (which favours short titles; per token with --score mean), popularity by train "
        "interactions, ALS by user·item score (ties count against the true item); *ranking, mean*: the "
        "log-likelihood per answer token; *ranking, calibrated*: the summed log-likelihood minus that of the "
        "title after a content-free prompt (`Recommend a {noun}.`, naming no items: the frozen LLM's prior for "
        "the title). The three LLM rankings come from one scoring pass.",
        "- *ranking head*: the ILM's ranking head scores the candidates from the next-item prompt (user and "
        "history, no candidates); its *full catalog* HR@10 ranks every catalog item, the user's earlier items "
        "masked out.",
        "- *generation*: the greedy answer mapped to a candidate title (*constrained*: decoding restricted to the "
        "candidates' titles by a prefix trie, so every answer is a candidate; for a model with a ranking head, each "
        "title is also weighted by the head's score, so the answer names the head's choice); where the likelihood "
        "rankings are evaluated too, an answer that spells out a candidate's title is read off their scoring pass, "
        "which holds greedy decoding's choice at every step along every title, and the others are decoded; *full "
        "catalog*: greedy answer to the next-item prompt, exact (normalised) title match.",
        "- *alignment*: held-out items, seen and held-out (unseen) templates; semantic = cosine of "
        "mean-pooled MiniLM embeddings of answer and reference.",
        f"- Values are means with 95% confidence intervals in brackets: {ci}; alignment resamples items.",
    ])


def to_markdown(results: dict) -> str:
    models = results["models"]
    lines = ["# Evaluation results", ""]
    for title, columns in TABLES.items():
        columns = [(header, path) for header, path in columns if any(lookup(m, path) is not None for m in models.values())]
        if not columns:
            continue
        lines += [f"## {title}", "", "| model | " + " | ".join(h for h, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
        rows = {name: m for name, m in models.items() if any(lookup(m, path) is not None for _, path in columns)}
        lines += [f"| {name} | " + " | ".join(cell(lookup(m, path)) for _, path in columns) + " |" for name, m in rows.items()]
        lines.append("")
    if not any(lookup(m, ("full_catalog", "hr@10")) for m in models.values()):
        lines += ["Full-catalog HR@10 / NDCG@10 by likelihood were skipped (enable with --full-catalog; slow on CPU).", ""]
    return "\n".join(lines + [protocol_note(results["protocol"]), ""])


def write_report(results: dict, out_dir) -> tuple:
    """Writes <out_dir>/results.json and results.md; returns their paths."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    write_text_atomic(json_path, json.dumps(results, indent=2))  # a killed evaluation leaves no half results.json
    write_text_atomic(md_path, to_markdown(results))
    return json_path, md_path
