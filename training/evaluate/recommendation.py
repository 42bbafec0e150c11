"""Recommendation metrics on the protocol's users.

- ranking: the true item's rank among the user's candidates by a score function (the model's
  answer likelihood, or a baseline's score): HR@1, NDCG@5. An LLM's likelihood comes in three
  readings of one scoring pass (`LikelihoodScores`): the summed log-likelihood of the title
  (section "ranking"; per token with reduce="mean"), its mean per answer token ("ranking_mean"),
  and the sum minus the title's log-likelihood under a content-free prompt ("ranking_calibrated"),
  which removes the prior that favours short or common titles.
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


def ranking_values(score_fn, protocol, k=(1, 5), desc="ranking") -> dict:
    """Per-user HR@k / NDCG@k (one value per protocol user, in order) of the target's rank by
    score_fn(user_id, candidate ids in display order) -> one score per candidate (higher = better)."""
    scores, truth = [], []
    for user_id in tqdm(protocol.users, desc=desc, leave=False):
        candidates = protocol.candidates[user_id]
        scores.append(np.asarray(score_fn(user_id, candidates), dtype=float).tolist())
        truth.append(candidates.index(protocol.targets[user_id]))
    return per_example("ranking", scores, truth, k=list(k))


def ranking_section(score_fn, protocol, n_boot=1000, seed=0, desc="ranking") -> dict:
    """HR@1 / NDCG@5 with CIs of `ranking_values`."""
    values = ranking_values(score_fn, protocol, k=(1, 5), desc=desc)
    return summarize_all(values, {"hr@1": "hr@1", "ndcg@5": "ndcg@5"}, n_boot, seed)


def likelihood_scorer(chat_model, protocol, template_id=CANDIDATE_TEMPLATE):
    """score_fn for ranking_section: the model's log-likelihood of each candidate's title as the answer."""

    def score(user_id, candidates):
        prompt = recommendation_prompt(protocol, user_id, template_id, with_candidates=True)
        return chat_model.score(prompt, [protocol.titles[c] for c in candidates])

    return score


class LikelihoodScores:
    """Three score_fns for ranking_section from ONE scoring pass per user: `chat_model.score_parts`
    of the candidate prompt is kept per (user, candidates), so ranking, ranking_mean and
    ranking_calibrated cost what ranking alone costs (plus one content-free pass over the titles).

    - `reduced`: what `likelihood_scorer` gives (sum, or mean with the model's reduce="mean");
    - `sum`: summed log-likelihood of the title (end-of-turn token included);
    - `mean`: sum / number of answer tokens;
    - `calibrated`: sum - the title's summed log-likelihood under `lm.content_free_prompt(noun)`
      (memoised by the ChatModel; the protocol's titles are scored in one pass on first use).
    """

    def __init__(self, chat_model, protocol, template_id=CANDIDATE_TEMPLATE):
        self.chat_model, self.protocol, self.template_id = chat_model, protocol, template_id
        self._parts = {}  # (user, candidates) -> (sums, lengths)
        self._content_free_ready = False

    def parts(self, user_id, candidates) -> tuple:
        key = (user_id, tuple(candidates))
        if key not in self._parts:
            prompt = recommendation_prompt(self.protocol, user_id, self.template_id, with_candidates=True)
            self._parts[key] = self.chat_model.score_parts(prompt, [self.protocol.titles[c] for c in candidates])
        return self._parts[key]

    def remember(self, user_id, candidates, parts):
        """Keeps `score_parts` computed elsewhere (`candidate_prompt_pass`)."""
        self._parts[(user_id, tuple(candidates))] = parts

    def sum(self, user_id, candidates) -> np.ndarray:
        return self.parts(user_id, candidates)[0]

    def mean(self, user_id, candidates) -> np.ndarray:
        sums, lengths = self.parts(user_id, candidates)
        return sums / lengths

    def reduced(self, user_id, candidates) -> np.ndarray:
        return self.mean(user_id, candidates) if self.chat_model.reduce == "mean" else self.sum(user_id, candidates)

    def content_free(self, candidates) -> np.ndarray:
        noun, titles = self.protocol.noun, self.protocol.titles
        if not self._content_free_ready:  # every candidate title of the protocol in one pass
            every = dict.fromkeys(titles[c] for u in self.protocol.users for c in self.protocol.candidates[u])
            self.chat_model.content_free_scores(list(every), noun)
            self._content_free_ready = True
        return self.chat_model.content_free_scores([titles[c] for c in candidates], noun)

    def calibrated(self, user_id, candidates) -> np.ndarray:
        return self.sum(user_id, candidates) - self.content_free(candidates)


def ranked_prompts(chat_model, protocol, template_id=NEXT_ITEM_TEMPLATE) -> dict:
    """user -> next-item prompt, every one already ranked by the head (in batches; `rank` then
    reads the memo)."""
    prompts = {u: recommendation_prompt(protocol, u, template_id, with_candidates=False) for u in protocol.users}
    chat_model.rank_prompts(list(prompts.values()))
    return prompts


def head_scorer(chat_model, protocol, template_id=NEXT_ITEM_TEMPLATE):
    """score_fn for ranking_section: the ranking head's score of each candidate, read from the
    next-item prompt (user and history, no candidates), so one forward ranks any number of items."""
    prompts = ranked_prompts(chat_model, protocol, template_id)

    def score(user_id, candidates):
        return chat_model.rank(prompts[user_id], candidates)

    return score


def head_full_catalog_section(chat_model, protocol, n_boot=1000, seed=0, template_id=NEXT_ITEM_TEMPLATE) -> dict:
    """HR@10 / NDCG@10 of the target among all catalog items by the ranking head (earlier items masked)."""
    row = {item["item_id"]: i for i, item in enumerate(protocol.catalog["items"])}
    scores, truth = [], []
    prompts = ranked_prompts(chat_model, protocol, template_id)
    for user_id in protocol.users:
        user_scores = chat_model.rank(prompts[user_id])
        target = row[protocol.targets[user_id]]
        user_scores[[row[i] for i in protocol.histories[user_id] if row[i] != target]] = -np.inf
        scores.append(user_scores.tolist())
        truth.append(target)
    values = per_example("ranking", scores, truth, k=[10])
    return summarize_all(values, {"hr@10": "hr@10", "ndcg@10": "ndcg@10"}, n_boot, seed)


def candidate_prompt_pass(chat_model, protocol, likelihood=None, generations=(), template_id=CANDIDATE_TEMPLATE) -> dict:
    """Runs each user's candidate prompt once, in batches, for all that is read from it: the
    likelihood of every candidate's title (kept in `likelihood`, a `LikelihoodScores`) and the greedy
    answers of `generations` ("generation"; "generation_constrained": among the candidates' titles,
    guided by the ranking head as in `generation_section`). Asked separately, each would run the
    prompts again; the prompt is most of the cost. With the likelihoods, a greedy answer that spells
    out a candidate's title is read off their scores (`lm.follow_answers`): the scores hold the
    model's choice at every step along every title, so only answers that leave the titles are
    decoded. Returns {generation: answers in user order}."""
    users, answers = protocol.users, {name: [] for name in generations}
    head = head_scorer(chat_model, protocol) if "generation_constrained" in generations and chat_model.has_ranking_head else None
    for start in tqdm(range(0, len(users), chat_model.batch_size), desc="candidate prompts", leave=False):
        batch = users[start : start + chat_model.batch_size]
        candidates = [protocol.candidates[u] for u in batch]
        prefill = chat_model.prefill([recommendation_prompt(protocol, u, template_id, with_candidates=True) for u in batch])
        scored = None
        if likelihood is not None:
            scored = chat_model.score_rows(prefill, [[protocol.titles[c] for c in row] for row in candidates])
            for user_id, row, row_scored in zip(batch, candidates, scored):
                likelihood.remember(user_id, row, (row_scored.sums, row_scored.lengths))
        for name in generations:
            if name == "generation_constrained":
                scores = [head(u, row) for u, row in zip(batch, candidates)] if head else None
                answers[name] += chat_model.generate_batch(prefill, candidates=candidates, candidate_scores=scores, scored=scored)
            else:
                answers[name] += chat_model.generate_batch(prefill, scored=scored)
    return answers


def log_examples(name, users, answers, targets, n=3):
    for user_id, answer, truth in list(zip(users, answers, targets))[:n]:
        log.info("%s | user %s | answer %r | target %r", name, user_id, answer, truth)


def generation_section(chat_model, protocol, n_boot=1000, seed=0, template_id=CANDIDATE_TEMPLATE, constrained=False, answers=None) -> dict:
    """Greedy answers to the candidate prompt; `constrained`: decoding restricted to the user's
    candidate titles (a prefix trie), so the answer always names a candidate, and, for a model with
    a ranking head, guided by the head's scores of the candidates (read from the next-item prompt,
    as in `head_scorer`), so the answer names the head's choice. `answers`: the answers already
    generated so (`candidate_prompt_pass`), in user order."""
    users = protocol.users
    if answers is None:
        name = "generation_constrained" if constrained else "generation"
        answers = candidate_prompt_pass(chat_model, protocol, generations=[name], template_id=template_id)[name]
    chosen = [chat_model.match_item(a, protocol.candidates[u]) for a, u in zip(answers, users)]
    log_examples("generation", users, answers, [protocol.titles[protocol.targets[u]] for u in users])
    values = per_example("choice", chosen, [protocol.targets[u] for u in users])
    return summarize_all(values, {"valid_ratio": "valid_ratio", "hr@1": "hr@1", "hr@1_valid": "hr@1_valid"}, n_boot, seed)


def full_catalog_section(chat_model, protocol, likelihood=False, n_boot=1000, seed=0, template_id=NEXT_ITEM_TEMPLATE) -> dict:
    users = protocol.users
    prompts = [recommendation_prompt(protocol, u, template_id, with_candidates=False) for u in users]
    targets = [protocol.titles[protocol.targets[u]] for u in users]
    # a head's scores of the catalog come from the same forward (`ranked_prompts` reads them)
    answers = chat_model.generate(prompts, desc="generation (full catalog)", rank=chat_model.has_ranking_head)
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
