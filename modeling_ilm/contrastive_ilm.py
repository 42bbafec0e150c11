"""Contrastive pieces of phase 1 (ITC, ITM hard negatives, item-item and user-item losses), and the
gathering of features across processes that lets them compare against every process's batch."""

import torch
from torch import nn


def process_group():
    """torch.distributed when several processes train together, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


class _GatherRows(torch.autograd.Function):
    """Every process's rows in rank order (any number per process); the backward hands each process
    the gradient of its own rows summed over every process's loss. torch's functional all_gather
    expects equal sizes and mishandles non-contiguous gradients (a transposed similarity's), hence this."""

    @staticmethod
    def forward(ctx, local, sizes):
        dist = process_group()
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[: len(local)] = local
        chunks = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(chunks, padded)
        rank = dist.get_rank()
        ctx.start, ctx.size = sum(sizes[:rank]), sizes[rank]
        return torch.cat([chunk[:size] for chunk, size in zip(chunks, sizes)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        process_group().all_reduce(grad)
        return grad[ctx.start : ctx.start + ctx.size], None


def gather_rows(*local: torch.Tensor) -> tuple[list[torch.Tensor], int, float]:
    """([rows of every process, per tensor], this process's offset in them, its share of the mean).

    The tensors hold one row per local example (same count). Contrastive losses compare local rows
    against every process's; a loss summed over the local rows and divided by the share averages,
    over DDP's gradient mean, to the single-process mean over all rows, however unevenly the rows are
    spread. One process: `(list(local), 0, len(rows))`.
    """
    rows = len(local[0])
    dist = process_group()
    if dist is None:
        return list(local), 0, float(rows)
    count = torch.tensor([rows], device=local[0].device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    gathered = [_GatherRows.apply(tensor.contiguous(), sizes) for tensor in local]
    return gathered, sum(sizes[: dist.get_rank()]), sum(sizes) / len(sizes)


def pool_queries(query_feats: torch.Tensor) -> torch.Tensor:
    """`(N, num_query_tokens, dim)` normalised per-query features -> one normalised vector per row."""
    return nn.functional.normalize(query_feats.mean(1), dim=-1)


def info_nce(logits: torch.Tensor, key_ids: torch.Tensor, offset: int = 0, share: float | None = None) -> torch.Tensor:
    """In-batch InfoNCE: row i's positive is key `offset + i`. Other keys with the positive's id
    are duplicates of it, not negatives, and are masked out. The mean over rows, or their sum
    divided by `share` (see `gather_rows`)."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    targets = rows + offset
    duplicate = key_ids[None, :] == key_ids[targets][:, None]
    duplicate[rows, targets] = False
    loss = nn.functional.cross_entropy(logits.masked_fill(duplicate, torch.finfo(logits.dtype).min), targets, reduction="sum")
    return loss / (logits.shape[0] if share is None else share)


def sample_hard_negatives(similarity: torch.Tensor, same: torch.Tensor, generator=None) -> torch.Tensor:
    """For each row, one column drawn in proportion to softmax(similarity), never a column marked
    `same` (the positive itself or a duplicate of it). Rows with no valid column get -1."""
    weights = similarity.float().softmax(-1).masked_fill(same, 0.0)
    usable = weights.sum(-1) > 0
    picks = torch.full((similarity.shape[0],), -1, dtype=torch.long, device=similarity.device)
    if usable.any():
        picks[usable] = torch.multinomial(weights[usable], 1, generator=generator).squeeze(-1)
    return picks
