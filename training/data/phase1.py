"""Phase-1 (item-encoder pretraining) data: item-text, item-item and user-item pairs.

item_item pairs are items consumed within `window` steps of each other by the same user in TRAIN.
Each unordered pair appears once, with item_id the one earlier in the catalog; self-pairs (repeat
consumption) are skipped. count = number of such co-occurrences.
"""

from collections import Counter

from datasets import Dataset, DatasetDict, Features, Value


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
