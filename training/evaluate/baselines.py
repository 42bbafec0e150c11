"""Non-LLM ranking baselines on the protocol's candidates: popularity and the ALS factors
that are the ILM's CF input. (The text-only LLM baseline is a ChatModel with as_text=True.)"""

import json
from collections import Counter
from pathlib import Path

import numpy as np
from datasets import load_from_disk
from safetensors.numpy import load_file


def popularity_scorer(data_dir):
    """score_fn: a candidate's number of train interactions."""
    counts = Counter(load_from_disk(str(Path(data_dir) / "interactions" / "train"))["item_id"])
    return lambda user_id, candidates: [counts.get(c, 0) for c in candidates]


def als_scorer(data_dir):
    """score_fn: user . item dot product of the ALS factors (cf/embeddings.safetensors, rows in cf/id_maps.json)."""
    cf = Path(data_dir) / "cf"
    tables = load_file(str(cf / "embeddings.safetensors"))
    id_maps = json.loads((cf / "id_maps.json").read_text())
    item_row = {t: i for i, t in enumerate(id_maps["item_ids"])}
    user_row = {u: i for i, u in enumerate(id_maps["user_ids"])}
    items, users = tables["item_embeddings"].astype(np.float64), tables["user_embeddings"].astype(np.float64)
    return lambda user_id, candidates: items[[item_row[c] for c in candidates]] @ users[user_row[user_id]]
