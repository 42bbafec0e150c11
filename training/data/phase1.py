"""Phase-1 (item-encoder pretraining) data: item-text, item-item and user-item pairs.

Building (`build_phase1`): item_item pairs are items consumed within `window` steps of each other by
the same user in TRAIN. Each unordered pair appears once, with item_id the one earlier in the
catalog; self-pairs (repeat consumption) are skipped. count = number of such co-occurrences.

Training (`Phase1Data.load`, `Phase1Examples`, `Phase1Collator`): the built tables loaded once,
with one map from ids to rows of the CF tables (the catalog's order).
"""

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict, Features, Value, load_from_disk


def holdout(ids, frac, rng):
    """Seeded split of ids into (train, validation, test); validation and test get frac each."""
    ids = list(ids)
    n = int(round(len(ids) * frac))
    order = rng.permutation(len(ids))
    val, test = set(order[:n].tolist()), set(order[n : 2 * n].tolist())
    pick = lambda keep: [t for i, t in enumerate(ids) if keep(i)]
    return pick(lambda i: i not in val and i not in test), pick(val.__contains__), pick(test.__contains__)


def canonical(a, b, position):
    return (a, b) if position[a] <= position[b] else (b, a)


def cooccurrence(seqs, window, position):
    """Counter {(item, partner): count} over consecutive consumption in the given sequences."""
    counts = Counter()
    for seq in seqs.values():
        for k in range(1, window + 1):
            for a, b in zip(seq, seq[k:]):
                if a != b:
                    counts[canonical(a, b, position)] += 1
    return counts


def held_out_pairs(train_seqs, val_items, position):
    """(last train item, validation item) per evaluated user; count = users with that pair."""
    counts = Counter()
    for u, (item, _) in val_items.items():
        last = train_seqs[u][-1]
        if last != item:
            counts[canonical(last, item, position)] += 1
    return counts


def to_dataset(rows, features):
    """Dataset from a list of dicts with fixed features (also right when rows is empty)."""
    return Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=Features(features))


STRING = Value("string")
PAIR_FEATURES = {"item_id": STRING, "partner_id": STRING, "count": Value("int64")}


def _pairs_dataset(counts, position):
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], position[kv[0][0]], position[kv[0][1]]))
    return to_dataset([{"item_id": a, "partner_id": b, "count": c} for (a, b), c in rows], PAIR_FEATURES)


def build_phase1(catalog, item_split, train_seqs, val_items, splits, like_threshold, window):
    """DatasetDict of the phase-1 tables; also returns the train co-occurrence counter (phase 2 uses it)."""
    position = {it["item_id"]: i for i, it in enumerate(catalog["items"])}
    text = {it["item_id"]: it["text"] for it in catalog["items"]}
    train_pairs = cooccurrence(train_seqs, window, position)
    liked = lambda df: df.loc[df["rating"] >= like_threshold, ["user_id", "item_id"]].to_dict("records")
    item_text = lambda ids: to_dataset(
        [{"item_id": t, "text": text[t]} for t in ids], {"item_id": STRING, "text": STRING}
    )
    user_item = {"user_id": STRING, "item_id": STRING}
    ds = DatasetDict(
        {
            "item_text_train": item_text(item_split[0]),
            "item_text_validation": item_text(item_split[1]),
            "item_item_train": _pairs_dataset(train_pairs, position),
            "item_item_validation": _pairs_dataset(held_out_pairs(train_seqs, val_items, position), position),
            "user_item_train": to_dataset(liked(splits["train"]), user_item),
            "user_item_validation": to_dataset(liked(splits["validation"]), user_item),
        }
    )
    return ds, train_pairs


def top_partners(pairs, min_count):
    """{item: [partners sorted by count desc]} from a co-occurrence counter, counts >= min_count."""
    out = {}
    for (a, b), c in sorted(pairs.items(), key=lambda kv: -kv[1]):
        if c >= min_count:
            out.setdefault(a, []).append(b)
            out.setdefault(b, []).append(a)
    return out


# --- training ---------------------------------------------------------------------------------------


@dataclass
class Phase1Data:
    """A build's phase-1 tables and catalog, loaded once. `item_row` / `user_row` map ids to rows of
    the CF tables, which are the catalog's order (`catalog.json`)."""

    tables: DatasetDict
    items: list  # catalog entries, in row order
    item_row: dict
    user_row: dict

    @classmethod
    def load(cls, data_dir) -> "Phase1Data":
        data_dir = Path(data_dir)
        catalog = json.loads((data_dir / "catalog.json").read_text())
        return cls(
            tables=load_from_disk(str(data_dir / "phase1")),
            items=catalog["items"],
            item_row={item["item_id"]: row for row, item in enumerate(catalog["items"])},
            user_row={user["user_id"]: row for row, user in enumerate(catalog.get("users", []))},
        )

    def item_rows(self, ids) -> list[int]:
        return [self.item_row[i] for i in ids]

    def validation_pairs(self) -> list[tuple[int, int]]:
        """Held-out item-item pairs, as CF-table rows (for item-item retrieval)."""
        pairs = self.tables["item_item_validation"]
        return list(zip(self.item_rows(pairs["item_id"]), self.item_rows(pairs["partner_id"])))


class Phase1Examples(torch.utils.data.Dataset):
    """One example per train item: its text, plus a related item and a user who liked it, drawn
    afresh each epoch (pairs weighted by how often the two items were consumed together).

    The draws are a function of (seed, epoch, index) alone: the same in any DataLoader worker or
    process, and a run resumed mid-epoch (whose skipped batches are never loaded) draws what the
    uninterrupted run drew. The Trainer sets the epoch (`set_epoch`)."""

    def __init__(self, data: Phase1Data, seed=0):
        texts = data.tables["item_text_train"]
        self.items, self.texts = data.item_rows(texts["item_id"]), texts["text"]
        self.partners, self.partner_weights, self.likers = {}, {}, {}
        pairs = data.tables["item_item_train"]
        for a, b, count in zip(data.item_rows(pairs["item_id"]), data.item_rows(pairs["partner_id"]), pairs["count"]):
            for x, y in ((a, b), (b, a)):  # stored once per unordered pair
                self.partners.setdefault(x, []).append(y)
                self.partner_weights.setdefault(x, []).append(count)
        likes = data.tables["user_item_train"]
        for user, item in zip(likes["user_id"], data.item_rows(likes["item_id"])):
            self.likers.setdefault(item, []).append(data.user_row[user])
        self.seed, self.epoch = seed, 0

    def __len__(self):
        return len(self.items)

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __getitem__(self, index):
        item, rng = self.items[index], np.random.default_rng([self.seed, self.epoch, index])
        partner, user = -1, -1
        if item in self.partners:
            weights = np.asarray(self.partner_weights[item], dtype=float)
            partner = int(rng.choice(self.partners[item], p=weights / weights.sum()))
        if item in self.likers:
            user = int(rng.choice(self.likers[item]))
        return {"item_ids": item, "text": self.texts[index], "partner_ids": partner, "user_ids": user}


class Phase1Collator:
    """Examples -> a batch: the texts tokenized for the Q-Former, ids as tensors (-1: none)."""

    def __init__(self, tokenizer, max_length):
        self.text_tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, examples):
        batch = self.text_tokenizer([e["text"] for e in examples], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        for key in ("item_ids", "partner_ids", "user_ids"):
            batch[key] = torch.tensor([e[key] for e in examples])
        return dict(batch)
