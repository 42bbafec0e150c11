"""Candidate lists for the ranking protocol: the true item first, then negatives the user never
interacted with in ANY split, sampled with a fixed seed. Files are JSON {user_id: [true, *others]}.
"""

import json
from pathlib import Path

import numpy as np

from .sources import DataValidationError


class NegativeSampler:
    """Samples items a user never interacted with. seen: {user_id: set of item ids, all splits}."""

    def __init__(self, item_ids, seen):
        self.item_ids = np.asarray(item_ids, dtype=object)
        index = {t: i for i, t in enumerate(item_ids)}
        self.seen = {u: np.array(sorted(index[t] for t in s), dtype=np.int64) for u, s in seen.items()}

    def sample(self, user_id, n, rng):
        """Up to n distinct unseen item ids (fewer only when the catalog is that small)."""
        pool = np.setdiff1d(np.arange(len(self.item_ids)), self.seen.get(user_id, []), assume_unique=True)
        return self.item_ids[rng.choice(pool, size=min(n, len(pool)), replace=False)].tolist()


def sample_candidates(targets, sampler, num_candidates, rng):
    """targets: {user_id: true item id} -> {user_id: [true, *negatives]} (num_candidates in all)."""
    return {u: [t, *sampler.sample(u, num_candidates - 1, rng)] for u, t in targets.items()}


def save_candidates(path, candidates):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(candidates))


def load_candidates(path, item_ids=None, user_ids=None):
    """Read and validate a candidates file: {user_id: [true item, other, ...]}.

    Each list needs >= 2 distinct string ids, the first being the true item. When item_ids / user_ids
    (e.g. from catalog.json) are given, every id must be in them.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataValidationError(f"{path}: no such candidates file (built data keeps them in <data>/candidates/<split>.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataValidationError(f"{path}: not valid JSON, so not a candidates file ({e})") from None
    if not isinstance(data, dict) or not data:
        raise DataValidationError(f"{path}: expected a non-empty JSON object {{user_id: [true_item, ...]}}")
    known_items = None if item_ids is None else set(item_ids)
    known_users = None if user_ids is None else set(user_ids)
    for user, cands in data.items():
        where = f"{path}: user {user!r}"
        if known_users is not None and user not in known_users:
            raise DataValidationError(f"{where}: unknown user id")
        if not isinstance(cands, list) or len(cands) < 2 or not all(isinstance(c, str) for c in cands):
            raise DataValidationError(f"{where}: expected a list of >= 2 string item ids, got {cands!r}")
        if len(set(cands)) != len(cands):
            dup = next(c for c in cands if cands.count(c) > 1)
            raise DataValidationError(f"{where}: duplicate candidate {dup!r} in {cands!r}")
        if known_items is not None:
            unknown = [c for c in cands if c not in known_items]
            if unknown:
                raise DataValidationError(f"{where}: item id(s) {unknown[:5]} not in the catalog")
    sizes = {len(c) for c in data.values()}
    if len(sizes) > 1:  # results are reported as "N-candidate": one N for every user
        usual = max(sizes, key=lambda n: sum(len(c) == n for c in data.values()))
        odd = [u for u, c in data.items() if len(c) != usual]
        raise DataValidationError(f"{path}: users {odd[:5]} have {len(data[odd[0]])} candidates, the others {usual}; give every user the same number")
    return data
