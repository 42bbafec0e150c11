"""Recommendation metrics on the protocol's users.

- ranking: the true item's rank among the user's candidates by a score function (the model's
  answer likelihood, or a baseline's score): HR@1, NDCG@5.
- generation: a greedy answer to the same candidate prompt, mapped to one of the candidates:
  valid_ratio, HR@1 over all users, HR@1 over users whose answer names a candidate.
- full catalog: a greedy answer to the next-item prompt, exact-title hit against the target; with
  `likelihood=True` also HR@10 / NDCG@10 of the target among all catalog items by likelihood, the
  user's earlier items masked out (costly on CPU: every title is scored for every user).
"""

import logging

import numpy as np
from tqdm.auto import tqdm

from modeling_ilm.processing_ilm import normalize_title

from .metrics import per_example, summarize_all
from .prompts import CANDIDATE_TEMPLATE, NEXT_ITEM_TEMPLATE, recommendation_prompt

log = logging.getLogger(__name__)


def ranking_section(score_fn, protocol, n_boot=1000, seed=0, desc="ranking") -> dict:
    """score_fn(user_id, candidate ids in display order) -> one score per candidate (higher = better)."""
    scores, truth = [], []
    for user_id in tqdm(protocol.users, desc=desc, leave=False):
        candidates = protocol.candidates[user_id]
        scores.append(np.asarray(score_fn(user_id, candidates), dtype=float).tolist())
        truth.append(candidates.index(protocol.targets[user_id]))
    values = per_example("ranking", scores, truth, k=[1, 5])
    return summarize_all(values, {"hr@1": "hr@1", "ndcg@5": "ndcg@5"}, n_boot, seed)


def likelihood_scorer(chat_model, protocol, template_id=CANDIDATE_TEMPLATE):
    """score_fn for ranking_section: the model's log-likelihood of each candidate's title as the answer."""

    def score(user_id, candidates):
        prompt = recommendation_prompt(protocol, user_id, template_id, with_candidates=True)
        return chat_model.score(prompt, [protocol.titles[c] for c in candidates])

    return score


def log_examples(name, users, answers, targets, n=3):
    for user_id, answer, truth in list(zip(users, answers, targets))[:n]:
        log.info("%s | user %s | answer %r | target %r", name, user_id, answer, truth)


def generation_section(chat_model, protocol, n_boot=1000, seed=0, template_id=CANDIDATE_TEMPLATE) -> dict:
    users = protocol.users
    prompts = [recommendation_prompt(protocol, u, template_id, with_candidates=True) for u in users]
    answers = chat_model.generate(prompts, desc="generation (candidates)")
    chosen = [chat_model.match_item(a, protocol.candidates[u]) for a, u in zip(answers, users)]
    log_examples("generation", users, answers, [protocol.titles[protocol.targets[u]] for u in users])
    values = per_example("choice", chosen, [protocol.targets[u] for u in users])
    return summarize_all(values, {"valid_ratio": "valid_ratio", "hr@1": "hr@1", "hr@1_valid": "hr@1_valid"}, n_boot, seed)


def full_catalog_section(chat_model, protocol, likelihood=False, n_boot=1000, seed=0, template_id=NEXT_ITEM_TEMPLATE) -> dict:
    users = protocol.users
    prompts = [recommendation_prompt(protocol, u, template_id, with_candidates=False) for u in users]
    targets = [protocol.titles[protocol.targets[u]] for u in users]
    answers = chat_model.generate(prompts, desc="generation (full catalog)")
    log_examples("full catalog", users, answers, targets)
    exact = per_example("exact_match", [normalize_title(a) for a in answers], [normalize_title(t) for t in targets])
    out = summarize_all(exact, {"exact_title_hit": "exact_match"}, n_boot, seed)
    if not likelihood:
        return out
    item_ids = [item["item_id"] for item in protocol.catalog["items"]]
    row = {item_id: i for i, item_id in enumerate(item_ids)}
    titles = [protocol.titles[i] for i in item_ids]
    scores, truth = [], []
    for user_id, prompt in zip(tqdm(users, desc="likelihood (full catalog)", leave=False), prompts):
        user_scores = chat_model.score(prompt, titles)
        target = row[protocol.targets[user_id]]
        seen = [row[i] for i in protocol.histories[user_id] if row[i] != target]
        user_scores[seen] = -np.inf  # earlier items are not recommendations
        scores.append(user_scores.tolist())
        truth.append(target)
    values = per_example("ranking", scores, truth, k=[10])
    return out | summarize_all(values, {"hr@10": "hr@10", "ndcg@10": "ndcg@10"}, n_boot, seed)
