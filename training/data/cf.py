"""Collaborative-filtering embeddings: implicit ALS on TRAIN interactions only.

Confidence of an observed (user, item) pair is 1 + alpha * rating (rating = 1 without ratings);
repeated pairs keep their highest rating. Rows of both matrices follow id_maps.json (catalog
order). Items (or users) without any train interaction keep whatever ALS leaves them: the
conjugate-gradient solve with an empty row pulls the small random init toward zero, so their
vectors are near zero and carry no CF signal.
"""

import json
import logging
from pathlib import Path

import implicit
import numpy as np
import scipy.sparse as sp
from safetensors.numpy import save_file
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)


def interaction_matrix(train, item_ids, user_ids, alpha):
    """users x items CSR of confidences 1 + alpha * rating."""
    pairs = train.groupby(["user_id", "item_id"], sort=False)["rating"].max().reset_index()
    rows = pairs["user_id"].map({u: i for i, u in enumerate(user_ids)}).to_numpy()
    cols = pairs["item_id"].map({t: i for i, t in enumerate(item_ids)}).to_numpy()
    conf = (1.0 + alpha * pairs["rating"].to_numpy()).astype(np.float32)
    return sp.csr_matrix((conf, (rows, cols)), shape=(len(user_ids), len(item_ids)), dtype=np.float32)


def train_als(train, item_ids, user_ids, dim=64, iterations=15, reg=0.05, alpha=1.0, seed=0, threads=2):
    """Returns (item_embeddings [I, dim], user_embeddings [U, dim]) as float32 arrays."""
    from implicit.cpu.als import AlternatingLeastSquares

    matrix = interaction_matrix(train, item_ids, user_ids, alpha)
    # BLAS threads fight implicit's own threads (implicit warns about it); 1 is the fast setting
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=dim, regularization=reg, alpha=1.0, iterations=iterations, random_state=seed, num_threads=threads
        )
        model.fit(matrix, show_progress=False)
    return np.ascontiguousarray(model.item_factors, np.float32), np.ascontiguousarray(model.user_factors, np.float32)


def hit_rates(item_emb, user_emb, item_ids, user_ids, candidates, ks=(1, 10)):
    """HR@k of user.item scores over candidate lists {user: [true, *others]}. Ties count against."""
    iix = {t: i for i, t in enumerate(item_ids)}
    uix = {u: i for i, u in enumerate(user_ids)}
    ranks = []
    for u, cands in candidates.items():
        scores = item_emb[[iix[c] for c in cands]] @ user_emb[uix[u]]
        ranks.append(int((scores[1:] >= scores[0]).sum()))
    ranks = np.array(ranks)
    return {f"hr@{k}": round(float((ranks < k).mean()), 4) if len(ranks) else None for k in ks} | {"users": len(ranks)}


def save_cf(out, item_emb, user_emb, item_ids, user_ids, config):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"item_embeddings": item_emb, "user_embeddings": user_emb}, str(out / "embeddings.safetensors"))
    (out / "id_maps.json").write_text(json.dumps({"item_ids": list(item_ids), "user_ids": list(user_ids)}))
    (out / "cf_config.json").write_text(json.dumps(config | {"implicit_version": implicit.__version__}, indent=2))
