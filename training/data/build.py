"""build_dataset: raw tables -> everything ILM trains and evaluates on, under one folder.

<out>/catalog.json                     items (id, title, text, genres, year) and users (attributes)
<out>/interactions/                    DatasetDict train / validation / test
<out>/cf/embeddings.safetensors        item_embeddings [I, d], user_embeddings [U, d] (float32)
<out>/cf/id_maps.json, cf_config.json, als_eval.json
<out>/candidates/{validation,test}.json  {user_id: [true item, 19 never-interacted items]}
<out>/phase1/, <out>/phase2/           DatasetDicts
<out>/stats.json                       every count, the config, build time
"""

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, Value
from datasets import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from training.config import check_whole_numbers

from . import cf, movielens
from .candidates import NegativeSampler, sample_candidates, save_candidates
from .catalog import build_catalog, save_catalog
from .phase1 import build_phase1, holdout, top_partners
from .phase2 import SPLITS as PHASE2_SPLITS
from .phase2 import Context, build_phase2
from .sources import DataValidationError, load_generic
from .splits import SPLITS, held_out, leave_one_out, ratings, sequences

log = logging.getLogger(__name__)

OUTPUTS = ("catalog.json", "interactions", "cf", "candidates", "phase1", "phase2", "stats.json")
INTERACTION_FEATURES = Features(
    {"user_id": Value("string"), "item_id": Value("string"), "rating": Value("float64"), "timestamp": Value("int64")}
)


@dataclass
class BuildConfig:
    seed: int = 0
    cf_dim: int = 64
    cf_iterations: int = 15
    cf_reg: float = 0.05
    cf_alpha: float = 1.0  # confidence = 1 + alpha * rating
    cf_threads: int = 2
    history_len: int = 10  # items shown as history in phase-2 prompts
    num_candidates: int = 20  # true item + 19 negatives
    # candidate lists in phase-2 prompts (and evaluation's candidate prompts) show each candidate's
    # title before its item tokens, LLaRA's hybrid rendering for that field: the LLM can answer by naming one
    candidate_titles: bool = False
    # and one candidate per line ("- Heat (1995) <item>"): titles hold commas, which blur a comma-separated list
    candidate_lines: bool = False
    # False (with candidate_titles): candidates are shown by their titles alone, no item tokens
    candidate_tokens: bool = True
    # and (with candidate_titles) each candidate's item tokens before its title ("<item> Heat (1995)"),
    # so the title an answer copies follows the tokens the LLM read the candidate from
    candidate_tokens_first: bool = False
    # False (with candidate_tokens_first): no space between a candidate's item tokens and its title
    # ("<item>Heat (1995)"), so the title's tokens are those of an answer naming it: greedy answers copy it
    # token for token (a third of ml-100k's titles start with a word split otherwise: " Toy" against "T", "oy")
    candidate_title_space: bool = True
    # candidates per training candidate-selection prompt (None: num_candidates); fewer make shorter
    # prompts, e.g. titled ones, where what is learnt is how to answer with a listed title
    num_train_candidates: int | None = None
    pair_window: int = 2  # item_item pairs: items at most this many steps apart in a user's sequence
    partner_min_count: int = 2  # similar_item / conversation partners need this many co-occurrences
    like_threshold: float = 4.0  # rating counted as "liked" (user_item, conversation)
    holdout_frac: float = 0.1  # items and users held out for validation, and again for test
    max_train_per_task: int | None = 2000
    max_eval_per_task: int | None = None  # None: every held-out user / item
    item_noun: str = "movie"

    def __post_init__(self):  # checked before anything is read or written
        check_whole_numbers(self, {"seed": 0, "cf_dim": 1, "cf_iterations": 1, "cf_threads": 1, "history_len": 1, "num_candidates": 2, "num_train_candidates": 2,
                                   "pair_window": 1, "partner_min_count": 1, "max_train_per_task": 1, "max_eval_per_task": 1})
        if not 0 < self.holdout_frac < 0.5:
            raise ValueError(f"holdout_frac must be between 0 and 0.5 (held out for validation, and again for test), got {self.holdout_frac!r}.")
        if not self.cf_reg >= 0 or not self.cf_alpha >= 0:
            raise ValueError(f"cf_reg and cf_alpha must be >= 0, got {self.cf_reg!r} and {self.cf_alpha!r}.")
        if not (self.candidate_titles or self.candidate_tokens):
            raise ValueError("candidate_tokens=False shows candidates without item tokens: set candidate_titles=True so they show their titles.")
        if self.candidate_tokens_first and not (self.candidate_titles and self.candidate_tokens):
            raise ValueError("candidate_tokens_first orders each candidate's item tokens and title: set candidate_titles=True and candidate_tokens=True.")
        if not (self.candidate_title_space or self.candidate_tokens_first):
            raise ValueError("candidate_title_space=False joins each candidate's item tokens to the title after them: set candidate_tokens_first=True.")


def load_source(dataset="ml-100k", interactions=None, items=None, users=None, grouplens=None, recbole=None):
    """Pick the source: generic files, a GroupLens folder, or the embedded ml-100k. Returns (Tables, name)."""
    if (interactions is None) != (items is None):
        raise ValueError("generic data needs both --interactions and --items")
    if interactions is not None and grouplens is not None:
        raise ValueError("pass either generic files or --grouplens, not both")
    if interactions is not None:
        return load_generic(interactions, items, users), "generic"
    if grouplens is not None:
        return movielens.load_grouplens(grouplens), "grouplens"
    if dataset != "ml-100k":
        raise ValueError(
            f"unknown dataset {dataset!r}: the embedded one is 'ml-100k'; use --interactions/--items otherwise"
        )
    return (
        movielens.load_recbole_ml100k(movielens.fetch_ml100k(recbole)),
        f"ml-100k (recbole=={movielens.RECBOLE_VERSION})",
    )


def _prepare_out(final):
    """The folder this build writes into: `<final>.partial`, empty. `final` itself is checked but not
    touched, so a build that fails leaves an earlier build there intact."""
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final}: exists and is a file, not a folder; choose another --out")
    if final.is_dir() and any(final.iterdir()) and not (final / "stats.json").exists():
        raise FileExistsError(f"{final}: exists, is not empty and holds no earlier build; choose another --out")
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
    except OSError as e:
        raise OSError(f"{partial}: cannot create the build folder ({e.strerror}); choose another --out") from None
    return partial


def _swap_in(partial, final):
    """Replaces the outputs of an earlier build in `final` by the finished build in `partial`,
    stats.json last (a folder without it is never taken for a build); other files in `final` stay."""
    final.mkdir(parents=True, exist_ok=True)
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    old.mkdir()
    for name in OUTPUTS[::-1]:  # stats.json first out of the way
        if (final / name).exists():
            shutil.move(final / name, old / name)
    for name in OUTPUTS:
        shutil.move(partial / name, final / name)
    shutil.rmtree(old)
    shutil.rmtree(partial)


def build_dataset(out, dataset="ml-100k", interactions=None, items=None, users=None, grouplens=None, recbole=None,
                  config=None, **overrides):
    """Build everything under `out`. Returns the stats dict (also written to <out>/stats.json), whose
    "out" key is the output folder. Keyword overrides set BuildConfig fields, e.g. seed=1."""
    cfg = config or BuildConfig()
    cfg = BuildConfig(**(asdict(cfg) | overrides))
    start = time.time()
    tables, source = load_source(dataset, interactions, items, users, grouplens, recbole)
    final, out = Path(out), _prepare_out(out)
    try:
        stats = _build(out, final, tables, source, cfg, start)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # the earlier build in `final` was never touched
        raise
    _swap_in(out, final)
    return stats


def _build(out, final, tables, source, cfg, start):
    n_users = "no" if tables.users is None else len(tables.users)
    log.info("source %s: %d interactions, %d items, %s users", source, len(tables.interactions), len(tables.items), n_users)

    catalog = build_catalog(tables)
    item_ids = [it["item_id"] for it in catalog["items"]]
    user_ids = [u["user_id"] for u in catalog["users"]]
    save_catalog(out / "catalog.json", catalog)

    splits, split_stats = leave_one_out(tables.interactions, user_ids)
    interactions = DatasetDict(
        {s: Dataset.from_pandas(splits[s], features=INTERACTION_FEATURES, preserve_index=False) for s in SPLITS}
    )
    train_seqs, train_ratings = sequences(splits["train"]), ratings(splits["train"])
    held = {s: held_out(splits[s]) for s in ("validation", "test")}
    if not held["test"] or not len(splits["train"]):
        raise DataValidationError(
            f"{tables.files.get('interactions', source)}: no user has enough interactions for a train / validation / test split "
            f"({len(tables.interactions)} interactions of {tables.interactions['user_id'].nunique()} users); each evaluated user needs at least 3"
        )

    # evaluation candidates: negatives never interacted with in any split
    seen = tables.interactions.groupby("user_id", sort=False)["item_id"].agg(set).to_dict()
    sampler = NegativeSampler(item_ids, seen)
    candidates = {}
    for i, s in enumerate(("validation", "test")):
        rng = np.random.default_rng([cfg.seed, 100 + i])
        candidates[s] = sample_candidates({u: t for u, (t, _) in held[s].items()}, sampler, cfg.num_candidates, rng)
        save_candidates(out / "candidates" / f"{s}.json", candidates[s])

    log.info("ALS: dim %d, %d iterations, %d train interactions", cfg.cf_dim, cfg.cf_iterations, len(splits["train"]))
    item_emb, user_emb = cf.train_als(
        splits["train"], item_ids, user_ids, dim=cfg.cf_dim, iterations=cfg.cf_iterations, reg=cfg.cf_reg,
        alpha=cfg.cf_alpha, seed=cfg.seed, threads=cfg.cf_threads,
    )
    cf_config = {
        "method": "implicit.cpu.als.AlternatingLeastSquares",
        "confidence": "1 + alpha * rating",
        "dim": cfg.cf_dim,
        "regularization": cfg.cf_reg,
        "iterations": cfg.cf_iterations,
        "alpha": cfg.cf_alpha,
        "seed": cfg.seed,
        "train_interactions": len(splits["train"]),
    }
    cf.save_cf(out / "cf", item_emb, user_emb, item_ids, user_ids, cf_config)
    als_eval = {s: cf.hit_rates(item_emb, user_emb, item_ids, user_ids, candidates[s]) for s in candidates}
    (out / "cf" / "als_eval.json").write_text(json.dumps(als_eval, indent=2))

    item_split = holdout(item_ids, cfg.holdout_frac, np.random.default_rng([cfg.seed, 200]))
    user_split = holdout(user_ids, cfg.holdout_frac, np.random.default_rng([cfg.seed, 201]))
    phase1, train_pairs = build_phase1(
        catalog, item_split, train_seqs, held["validation"], splits, cfg.like_threshold, cfg.pair_window
    )

    ratings_all = tables.interactions["rating"]
    ctx = Context(
        items={it["item_id"]: it for it in catalog["items"]},
        users={u["user_id"]: u for u in catalog["users"]},
        item_split=item_split,
        user_split=user_split,
        train_seqs=train_seqs,
        train_ratings=train_ratings,
        held=held,
        candidates=candidates,
        partners=top_partners(train_pairs, cfg.partner_min_count),
        sampler=sampler,
        has_ratings=tables.has_ratings,
        rating_range=(float(ratings_all.min()), float(ratings_all.max())),
        like_threshold=cfg.like_threshold,
        history_len=cfg.history_len,
        num_candidates=cfg.num_candidates,
        num_train_candidates=cfg.num_train_candidates or cfg.num_candidates,
        noun=cfg.item_noun,
        candidate_titles=cfg.candidate_titles,
        candidate_lines=cfg.candidate_lines,
        candidate_tokens=cfg.candidate_tokens,
        candidate_tokens_first=cfg.candidate_tokens_first,
        candidate_title_space=cfg.candidate_title_space,
    )
    phase2, phase2_counts = build_phase2(ctx, cfg.seed, cfg.max_train_per_task, cfg.max_eval_per_task)

    quiet = are_progress_bars_disabled()
    disable_progress_bars()  # one "Saving the dataset" bar per split is noise
    try:
        for name, ds in (("interactions", interactions), ("phase1", phase1), ("phase2", phase2)):
            ds.save_to_disk(out / name)
    finally:
        if not quiet:
            enable_progress_bars()

    trained_items = set(splits["train"]["item_id"])
    stats = {
        "out": str(final),
        "source": {"name": source, "files": tables.files},
        "config": asdict(cfg),
        "counts": {
            "items": len(item_ids),
            "users": len(user_ids),
            "interactions": len(tables.interactions),
            "has_ratings": tables.has_ratings,
        },
        "dropped": tables.dropped,
        "splits": split_stats,
        "items_without_train_interactions": sum(t not in trained_items for t in item_ids),
        "users_without_interactions": len(user_ids) - split_stats["users_with_interactions"],
        "holdout": {"items": dict(zip(SPLITS, map(len, item_split))), "users": dict(zip(SPLITS, map(len, user_split)))},
        "candidates": {
            s: {"users": len(c), "short_lists": sum(len(v) < cfg.num_candidates for v in c.values())}
            for s, c in candidates.items()
        },
        "cf": {"dim": cfg.cf_dim, "als_eval": als_eval},
        "phase1": {name: len(d) for name, d in phase1.items()},
        "phase2": phase2_counts,
        "phase2_totals": {s: len(phase2[s]) for s in PHASE2_SPLITS},
        "caps": {"max_train_per_task": cfg.max_train_per_task, "max_eval_per_task": cfg.max_eval_per_task},
    }
    stats["build_seconds"] = round(time.time() - start, 2)
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def summary(stats):
    """A small human-readable table of a build's stats."""
    c, s = stats["counts"], stats["splits"]
    lines = [
        f"out: {stats['out']}   source: {stats['source']['name']}   build: {stats['build_seconds']}s",
        f"items {c['items']}  users {c['users']}  interactions {c['interactions']}  "
        f"(train {s['interactions']['train']} / validation {s['interactions']['validation']} / test {s['interactions']['test']})",
        f"users evaluated {s['users_evaluated']}, train-only (<3 interactions) {s['users_train_only_lt3_interactions']}; "
        f"dropped {sum(stats['dropped'].values())} rows {({k: v for k, v in stats['dropped'].items() if v})}",
        "ALS baseline "
        + "  ".join(f"{k}: HR@1 {v['hr@1']} HR@10 {v['hr@10']}" for k, v in stats["cf"]["als_eval"].items()),
        "phase1 " + "  ".join(f"{k} {v}" for k, v in stats["phase1"].items()),
        "",
        f"{'phase2 task':<22}" + "".join(f"{x:>19}" for x in PHASE2_SPLITS),
    ]
    for task, counts in stats["phase2"].items():
        lines.append(f"{task:<22}" + "".join(f"{counts.get(x, 0):>19}" for x in PHASE2_SPLITS))
    lines.append(f"{'total':<22}" + "".join(f"{stats['phase2_totals'][x]:>19}" for x in PHASE2_SPLITS))
    return "\n".join(lines)
