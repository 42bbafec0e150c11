"""Leave-one-out split by time, per user.

Each user's interactions are ordered by timestamp with a STABLE sort, so equal timestamps keep
their order in the input file. The last one goes to test, the one before it to validation, the
rest to train. Users with fewer than 3 interactions stay entirely in train (never evaluated).
"""

import numpy as np

SPLITS = ("train", "validation", "test")


def leave_one_out(inter, user_ids):
    """inter: normalised interactions in file order; user_ids: catalog user order.

    Returns ({split: DataFrame}, stats). Frames are sorted by (user in catalog order, time, file row).
    """
    df = inter.assign(_row=np.arange(len(inter)), _user=inter["user_id"].map({u: i for i, u in enumerate(user_ids)}))
    df = df.sort_values(["_user", "timestamp", "_row"], kind="stable")
    n = df.groupby("_user", sort=False)["_row"].transform("size")
    from_end = df.groupby("_user", sort=False).cumcount(ascending=False)  # 0 = latest
    split = np.where(n < 3, "train", np.select([from_end == 0, from_end == 1], ["test", "validation"], "train"))
    out = {s: df[split == s].drop(columns=["_row", "_user"]).reset_index(drop=True) for s in SPLITS}
    per_user = n.groupby(df["_user"]).first()
    stats = {
        "interactions": {s: len(out[s]) for s in SPLITS},
        "users_with_interactions": int(len(per_user)),
        "users_evaluated": int((per_user >= 3).sum()),
        "users_train_only_lt3_interactions": int((per_user < 3).sum()),
    }
    return out, stats


def sequences(df):
    """{user_id: [item ids in time order]} of one split frame (already time-sorted)."""
    return {u: g.tolist() for u, g in df.groupby("user_id", sort=False)["item_id"]}


def ratings(df):
    """{user_id: [ratings in time order]}, aligned with sequences(df)."""
    return {u: g.tolist() for u, g in df.groupby("user_id", sort=False)["rating"]}


def held_out(df):
    """{user_id: (item_id, rating)} of a validation/test frame (one row per user)."""
    return {u: (i, r) for u, i, r in zip(df["user_id"], df["item_id"], df["rating"])}
