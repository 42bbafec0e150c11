"""Phase-2 (alignment) data: multitask chat examples built only from real fields and interactions.

Every task has a builder that yields "facts" (field values for templates) in a seeded random order;
the first `cap` are kept and rendered with a randomly chosen applicable template. validation/test
facts are rendered twice: with seen templates (validation, test) and with the held-out template
(validation_unseen, test_unseen), so the two differ only in wording.

Where examples come from (train never looks at validation/test interactions):
- item tasks (item_title, item_genres, item_year, similar_item) and user_profile: train on the
  train item/user holdout, evaluate on the held-out validation / test items or users (the same
  validation items phase 1 keeps out of item_text_train).
- sequence tasks (next_item_title, candidate_selection, conversation): train targets are positions
  inside each user's train sequence (history = the items before it); validation targets the user's
  validation item (history = train), test the test item (history = train + validation).
- user_rating: train on train interactions, evaluate on the held-out ones.
- similar_item / conversation partners come from the train co-occurrence counts only.
"""

import bisect
import string
from dataclasses import dataclass

import numpy as np
from datasets import DatasetDict, List, Value
from tqdm.auto import tqdm

from .catalog import user_profile
from .phase1 import to_dataset
from .templates import (
    ITEM_TOKEN,
    TASKS,
    USER_TOKEN,
    get_template,
    items,
    render,
    template_fields,
    template_ids,
    user,
)

SPLITS = ("train", "validation", "test", "validation_unseen", "test_unseen")
FEATURES = {
    "task": Value("string"),
    "template_id": Value("string"),
    "messages": List({"role": Value("string"), "content": Value("string")}),
    "item_ids": List(Value("string")),
    "user_ids": List(Value("string")),
    "target": Value("string"),
    "target_item_id": Value("string"),
}
SPLIT_INDEX = {"train": 0, "validation": 1, "test": 2}


@dataclass
class Context:
    items: dict  # item_id -> catalog entry
    users: dict  # user_id -> catalog entry
    item_split: tuple  # (train, validation, test) item id lists
    user_split: tuple  # (train, validation, test) user id lists
    train_seqs: dict  # user_id -> train item ids in time order
    train_ratings: dict  # user_id -> ratings aligned with train_seqs
    held: dict  # "validation"/"test" -> {user_id: (item_id, rating)}
    candidates: dict  # "validation"/"test" -> {user_id: [true, *others]}
    partners: dict  # item_id -> co-consumed partners, most frequent first (train only)
    sampler: object  # candidates.NegativeSampler
    has_ratings: bool
    rating_range: tuple  # (low, high) ratings seen in the data
    like_threshold: float
    history_len: int
    num_candidates: int
    num_train_candidates: int
    noun: str
    candidate_titles: bool = False  # candidate lists show each title before its placeholder
    candidate_lines: bool = False  # candidate lists show one candidate per line
    candidate_tokens: bool = True  # False: candidate lists show titles alone
    candidate_tokens_first: bool = False  # candidate lists show each candidate's tokens before its title
    candidate_title_space: bool = True  # ... and a space between them


def _number(x):
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _shuffled(seq, rng):
    return [seq[i] for i in rng.permutation(len(seq))]


# ---------------------------------------------------------------------------------------------
# fact builders: each yields dicts of template fields; "item_of" maps title fields to item ids


def item_facts(ctx, split, rng):
    for t in _shuffled(ctx.item_split[SPLIT_INDEX[split]], rng):
        it = ctx.items[t]
        yield {
            "item": items(t),
            "title": it["title"],
            "genres": ", ".join(it["genres"]) or None,
            "year": it["year"],
            "partner_title": ctx.items[ctx.partners[t][0]]["title"] if t in ctx.partners else None,
            "item_of": {"title": t, "partner_title": ctx.partners.get(t, [None])[0]},
        }


def user_facts(ctx, split, rng):
    for u in _shuffled(ctx.user_split[SPLIT_INDEX[split]], rng):
        yield {"user": user(u), "profile": user_profile(ctx.users[u]) or None}


def rating_facts(ctx, split, rng):
    if not ctx.has_ratings:
        return
    if split == "train":
        units = [(u, t, r) for u, seq in ctx.train_seqs.items() for t, r in zip(seq, ctx.train_ratings[u])]
    else:
        units = [(u, t, r) for u, (t, r) in ctx.held[split].items()]
    low, high = map(_number, ctx.rating_range)
    for u, t, r in _shuffled(units, rng):
        yield {"user": user(u), "item": items(t), "rating": _number(r), "low": low, "high": high}


def events(ctx, split, rng):
    """(user, sequence, its ratings, end, target) for next-item style tasks: the history is
    `sequence[:end]`. Consumers slice only what they show, since one user's sequence can be long
    (a train example per position: slicing whole histories would cost the square of its length)."""
    if split == "train":
        units = [(u, k) for u, seq in ctx.train_seqs.items() for k in range(1, len(seq))]
        for u, k in _shuffled(units, rng):
            yield u, ctx.train_seqs[u], ctx.train_ratings[u], k, ctx.train_seqs[u][k]
        return
    for u in _shuffled(list(ctx.held[split]), rng):
        seq, ratings = ctx.train_seqs[u], ctx.train_ratings[u]
        if split == "test":  # the validation interaction is history for the test one
            item, rating = ctx.held["validation"][u]
            seq, ratings = seq + [item], ratings + [rating]
        yield u, seq, ratings, len(seq), ctx.held[split][u][0]


def next_item_facts(ctx, split, rng):
    for u, seq, _, end, target in events(ctx, split, rng):
        yield {
            "user": user(u),
            "history": items(*seq[max(0, end - ctx.history_len) : end]),
            "title": ctx.items[target]["title"],
            "item_of": {"title": target},
        }


def candidate_facts(ctx, split, rng):
    for facts in next_item_facts(ctx, split, rng):
        u, target = facts["user"].ids[0], facts["item_of"]["title"]
        if split == "train":
            cands = [target, *ctx.sampler.sample(u, ctx.num_train_candidates - 1, rng)]
        else:
            cands = ctx.candidates[split][u]
        yield facts | {"candidates": items(*_shuffled(cands, rng), titled=ctx.candidate_titles, lines=ctx.candidate_lines, tokens=ctx.candidate_tokens,
                                         tokens_first=ctx.candidate_tokens_first, spaced=ctx.candidate_title_space)}


def conversation_facts(ctx, split, rng):
    liked_at = {}  # user -> positions of liked items in the sequence `events` gives for them
    for u, seq, ratings, end, target in events(ctx, split, rng):
        if split != "train" or u not in liked_at:  # a train sequence is the same for all its positions
            liked_at[u] = [i for i, r in enumerate(ratings) if r >= ctx.like_threshold or not ctx.has_ratings]
        stop = bisect.bisect_left(liked_at[u], end)
        liked = [seq[i] for i in liked_at[u][max(0, stop - 3) : stop]]  # the last liked ones, at most 3 used below
        genres = ctx.items[target]["genres"]
        if not liked or not genres:
            continue
        liked = liked[-int(rng.integers(1, 4)) :]
        genre = genres[int(rng.integers(len(genres)))]
        partner = next(
            (p for p in ctx.partners.get(target, []) if genre in ctx.items[p]["genres"] and p not in liked), None
        )
        yield {
            "user": user(u),
            "liked": items(*liked),
            "liked_title": ctx.items[liked[0]]["title"],
            "genre": genre,
            "title": ctx.items[target]["title"],
            "year": ctx.items[target]["year"],
            "partner_title": None if partner is None else ctx.items[partner]["title"],
            "item_of": {"title": target, "partner_title": partner, "liked_title": liked[0]},
        }


BUILDERS = {
    "item_title": item_facts,
    "item_genres": item_facts,
    "item_year": item_facts,
    "next_item_title": next_item_facts,
    "candidate_selection": candidate_facts,
    "user_profile": user_facts,
    "user_rating": rating_facts,
    "similar_item": item_facts,
    "conversation": conversation_facts,
}
assert set(BUILDERS) == set(TASKS)


# ---------------------------------------------------------------------------------------------


def make_row(task, facts, choices, rng, titles=None):
    """Render facts with a random template among `choices` whose fields are all present
    (`titles`: item id -> title, for titled fields)."""
    present = {k for k, v in facts.items() if v is not None}
    usable = [tid for tid in choices if template_fields(get_template(tid)) <= present]
    if not usable:
        return None
    tid = usable[int(rng.integers(len(usable)))]
    template = get_template(tid)
    messages, item_ids, user_ids = render(template, facts, titles)
    text = "".join(m["content"] for m in messages)
    assert text.count(ITEM_TOKEN) == len(item_ids) and text.count(USER_TOKEN) == len(user_ids), tid
    item_of = facts.get("item_of", {})
    answer_items = [item_of[f] for _, f, _, _ in string.Formatter().parse(template[-1]) if f in item_of]
    return {
        "task": task,
        "template_id": tid,
        "messages": messages,
        "item_ids": item_ids,
        "user_ids": user_ids,
        "target": messages[-1]["content"],
        "target_item_id": answer_items[-1] if answer_items else "",
    }


def build_phase2(ctx, seed, max_train_per_task, max_eval_per_task):
    """Returns (DatasetDict with SPLITS, counts {task: {split: n}})."""
    rows = {s: [] for s in SPLITS}
    counts = {task: {} for task in TASKS}
    titles = {item_id: item["title"] for item_id, item in ctx.items.items()}
    for ti, task in enumerate(tqdm(TASKS, desc="phase2 tasks")):
        for split, si in SPLIT_INDEX.items():
            rng = np.random.default_rng([seed, ti, si])  # independent stream per (task, split)
            cap = max_train_per_task if split == "train" else max_eval_per_task
            seen, unseen = [], []
            for facts in BUILDERS[task](ctx, split, rng):
                if cap is not None and len(seen) >= cap:
                    break
                facts["noun"] = ctx.noun
                row = make_row(task, facts, template_ids(task, unseen=False), rng, titles)
                if row is None:  # no template fits these facts (e.g. an item without genres)
                    continue
                seen.append(row)
                if split != "train":
                    row = make_row(task, facts, template_ids(task, unseen=True), rng, titles)
                    unseen += [row] if row is not None else []
            rows[split] += seen
            counts[task][split] = len(seen)
            if split != "train":
                rows[f"{split}_unseen"] += unseen
                counts[task][f"{split}_unseen"] = len(unseen)
    ds = DatasetDict({s: to_dataset(rows[s], FEATURES) for s in SPLITS})
    return ds, counts
