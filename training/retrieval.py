"""Phase-1 evaluation: retrieval over the whole catalog with the item encoder's features."""

import torch
from torch import nn


def recall_at_k(scores: torch.Tensor, targets: torch.Tensor, ks=(1, 10)) -> dict:
    """Fraction of rows whose target column ranks in the top k (ties count against it)."""
    target_scores = scores.gather(1, targets[:, None])
    rank = (scores > target_scores).sum(1)
    return {f"recall@{k}": (rank < k).float().mean().item() for k in ks}


@torch.no_grad()
def encode_in_batches(fn, inputs, batch_size=256):
    return torch.cat([fn(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


@torch.no_grad()
def item_to_text_recall(model, tokenize, query_rows, catalog_texts, batch_size=256) -> dict:
    """Each query item retrieves its own text among all catalog texts (BLIP-2's ITC score)."""
    device = model.device
    text_feats = []
    for start in range(0, len(catalog_texts), batch_size):
        batch = tokenize(catalog_texts[start : start + batch_size]).to(device)
        text_feats.append(model.text_features(batch["input_ids"], batch["attention_mask"]))
    text_feats = torch.cat(text_feats)
    rows = torch.as_tensor(query_rows, device=device)
    query_feats = encode_in_batches(lambda r: model.query_features(model.cf_vectors("item", r)), rows, batch_size)
    scores = torch.cat([model.item_text_similarity(q[None], text_feats)[0][None] for q in query_feats])
    return recall_at_k(scores, rows)


@torch.no_grad()
def item_to_item_recall(item_vectors: torch.Tensor, pairs, ks=(10,)) -> dict:
    """For held-out pairs (a, b): does b rank in a's top k among all other items (cosine)?"""
    vectors = nn.functional.normalize(item_vectors.float(), dim=-1)
    anchors = torch.as_tensor([a for a, _ in pairs])
    partners = torch.as_tensor([b for _, b in pairs])
    scores = vectors[anchors] @ vectors.t()
    scores[torch.arange(len(anchors)), anchors] = -float("inf")  # an item is not its own neighbour
    return recall_at_k(scores, partners, ks)


@torch.no_grad()
def encoder_item_vectors(model, num_items, batch_size=256) -> torch.Tensor:
    rows = torch.arange(num_items, device=model.device)
    return encode_in_batches(lambda r: model.pooled_features(model.cf_vectors("item", r)), rows, batch_size).cpu()
