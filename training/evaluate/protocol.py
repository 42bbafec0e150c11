"""The 20-candidate protocol: which users, their candidates (in display order), targets and histories.

- Users: every user of the candidates file, or the first N in natural sorted order
  ("2" < "10"; non-numeric ids after numeric ones, alphabetically).
- Candidates: the file's row, true item first. The display order is a seeded shuffle of the SORTED
  row, so position carries no signal and the order inside the file changes nothing.
- History: the user's interactions before the evaluated split (validation: train; test: train +
  validation), in time order; prompts show the last `history_len`. For an external candidates
  file the first id of a row is taken as the held-out item of that split.
"""

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import load_from_disk

from training.data import DataValidationError, load_candidates

HISTORY_SPLITS = {"validation": ("train",), "test": ("train", "validation")}


def natural_key(user_id: str):
    return (0, int(user_id), "") if user_id.isdigit() else (1, 0, user_id)


def select_users(user_ids, n=None) -> list:
    ordered = sorted(user_ids, key=natural_key)
    return ordered if n is None else ordered[:n]


def display_order(user_id: str, candidates, seed: int) -> list:
    """Seeded shuffle of the sorted candidates: depends on (seed, user, candidate SET) only."""
    rng = np.random.default_rng([seed, zlib.crc32(user_id.encode())])  # str hash() is salted per process
    ordered = sorted(candidates)
    return [ordered[i] for i in rng.permutation(len(ordered))]


def load_catalog(data_dir) -> dict:
    return json.loads((Path(data_dir) / "catalog.json").read_text())


def built_config(data_dir) -> dict:
    """The BuildConfig a data folder was built with (stats.json), {} for a folder without one."""
    stats = Path(data_dir) / "stats.json"
    return json.loads(stats.read_text()).get("config", {}) if stats.exists() else {}


def user_histories(data_dir, split: str) -> dict:
    """{user_id: [item ids before `split`, oldest first]}."""
    if split not in HISTORY_SPLITS:
        raise ValueError(f"split={split!r}; evaluate on one of {sorted(HISTORY_SPLITS)}.")
    interactions = load_from_disk(str(Path(data_dir) / "interactions"))
    # each split is sorted by user then time, and validation comes after train for every user
    frames = [interactions[name].to_pandas() for name in HISTORY_SPLITS[split]]
    return pd.concat(frames).groupby("user_id", sort=False)["item_id"].agg(list).to_dict()


@dataclass
class Protocol:
    split: str
    candidates_file: str
    users: list  # evaluated users, in order
    candidates: dict  # user -> candidate ids in display order
    targets: dict  # user -> true item id
    histories: dict  # user -> every item before the target, oldest first
    catalog: dict
    history_len: int = 10
    seed: int = 0
    noun: str = "movie"
    candidate_titles: bool = False  # candidate prompts show each title before its placeholder (as the data build did)
    candidate_lines: bool = False  # ... one candidate per line
    candidate_tokens: bool = True  # ... the candidates' item tokens (False: titles alone)
    candidate_tokens_first: bool = False  # ... each candidate's item tokens before its title
    candidate_title_space: bool = True  # ... and a space between them
    titles: dict = field(init=False)  # item id -> title

    def __post_init__(self):
        self.titles = {item["item_id"]: item["title"] for item in self.catalog["items"]}

    def history(self, user_id) -> list:
        return self.histories.get(user_id, [])[-self.history_len :] if self.history_len else []

    @property
    def num_candidates(self) -> int:
        return max(len(c) for c in self.candidates.values())

    def describe(self, bootstrap: int) -> dict:
        """The "protocol" block of results.json."""
        described = {
            "name": f"{self.num_candidates}-candidate",
            "num_candidates": self.num_candidates,
            "split": self.split,
            "users": len(self.users),
            "candidates_file": self.candidates_file,
            "history_len": self.history_len,
            "bootstrap": bootstrap,
            "seed": self.seed,
        }
        for option, default in (("candidate_titles", False), ("candidate_lines", False), ("candidate_tokens", True), ("candidate_tokens_first", False),
                                ("candidate_title_space", True)):
            if getattr(self, option) != default:  # only when set: results and caches of the default protocol keep their keys
                described[option] = getattr(self, option)
        return described


def load_protocol(data_dir, split="test", candidates_file=None, users=None, seed=0, history_len=None) -> Protocol:
    """The evaluated users, their candidates, targets and histories. `history_len`: items shown as
    history in prompts (None: the data build's own, as its phase-2 prompts show; 10 for older builds)."""
    if users is not None and (isinstance(users, bool) or not isinstance(users, int) or users < 1):
        raise ValueError(f"users={users!r}: give a number of users >= 1, or None for every user.")
    data_dir = Path(data_dir)
    catalog = load_catalog(data_dir)
    own = data_dir / "candidates" / f"{split}.json"  # the build's: each user's held-out item first
    external = candidates_file is not None and Path(candidates_file).resolve() != own.resolve()
    candidates_file = str(candidates_file or own)
    rows = load_candidates(
        candidates_file,
        item_ids=[item["item_id"] for item in catalog["items"]],
        user_ids=[u["user_id"] for u in catalog["users"]],
    )
    chosen = select_users(rows, users)
    histories = user_histories(data_dir, split)
    if external and own.exists():  # the histories end where the split's held-out item starts: the targets must be those
        held_out = {u: c[0] for u, c in json.loads(own.read_text()).items()}
        wrong = [u for u in rows if u in held_out and rows[u][0] != held_out[u]]
        if wrong:
            raise DataValidationError(
                f"{candidates_file}: the true item (first candidate) of users {wrong[:5]} is not their held-out {split} item "
                f"(e.g. user {wrong[0]}: {rows[wrong[0]][0]!r}, held out: {held_out[wrong[0]]!r}): this file does not match "
                f"the {split} split of {data_dir}."
            )
    built = built_config(data_dir)
    return Protocol(
        split=split,
        candidates_file=candidates_file,
        users=chosen,
        candidates={u: display_order(u, rows[u], seed) for u in chosen},
        targets={u: rows[u][0] for u in chosen},
        histories={u: histories.get(u, []) for u in chosen},
        catalog=catalog,
        history_len=built.get("history_len", 10) if history_len is None else history_len,
        seed=seed,
        noun=built.get("item_noun", "item"),
        candidate_titles=bool(built.get("candidate_titles", False)),
        candidate_lines=bool(built.get("candidate_lines", False)),
        candidate_tokens=bool(built.get("candidate_tokens", True)),
        candidate_tokens_first=bool(built.get("candidate_tokens_first", False)),
        candidate_title_space=bool(built.get("candidate_title_space", True)),
    )
