"""One phase-1 step on a fixed global batch: under `torchrun --nproc_per_node N` each process takes its
slice of the batch (DDP, gloo); run plainly, one process takes all of it. Writes the loss of each
component (averaged over processes, as Trainer logs it) and every gradient to OUT (a safetensors file),
so a test can check that N processes compute what one does.

    python tests/multiprocess/phase1_step.py LLM BERT OUT [--itm-only]
"""

import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel

from modeling_ilm import ILMForItemTextPretraining
from modeling_ilm import modeling_ilm

LOSSES = ("itc", "itm", "itg", "item_item", "user_item")


def global_batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(7, 99, (8, 6), generator=g)
    ids[:, 0] = 4  # [CLS]
    return {
        "item_ids": torch.arange(8),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        # uneven on purpose: rows 0-3 hold three item-item pairs and one user, rows 4-7 one pair and four users
        "partner_ids": torch.tensor([8, 9, 10, -1, -1, 11, -1, -1]),
        "user_ids": torch.tensor([0, -1, -1, -1, 1, 2, 3, 4]),
    }


def main(llm, bert, out, itm_only=False):
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    torch.manual_seed(0)
    weights = {name: float(name == "itm") if itm_only else float(name != "itm") for name in LOSSES}
    model = ILMForItemTextPretraining.from_components(
        llm, bert, item_embeddings=torch.randn(12, 8), user_embeddings=torch.randn(5, 8), num_query_tokens=2,
        contrastive_dim=16, phase1_loss_weights=weights,
        qformer_config={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    ).train()
    batch = global_batch()
    if itm_only:  # one row per process: every ITM negative must come from another process
        batch = {k: v[:world] for k, v in batch.items()}
    rows = len(batch["item_ids"]) // world
    local = {k: v[rank * rows : (rank + 1) * rows] for k, v in batch.items()}
    negatives = []
    if itm_only:
        draw = modeling_ilm.sample_hard_negatives
        modeling_ilm.sample_hard_negatives = lambda *a, **k: negatives.append(draw(*a, **k)) or negatives[-1]
    wrapped = DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model
    output = wrapped(**local)
    output.loss.backward()
    result = {f"loss_{name}": getattr(output, f"loss_{name}").detach().reshape(1) for name in LOSSES if getattr(output, f"loss_{name}") is not None}
    result["loss"] = output.loss.detach().reshape(1)
    if itm_only:
        result["negatives"] = torch.cat(negatives)
    if world > 1:
        for key in [k for k in result if k.startswith("loss")]:
            dist.all_reduce(result[key])
            result[key] /= world
        if itm_only:
            gathered = [torch.zeros_like(result["negatives"]) for _ in range(world)]
            dist.all_gather(gathered, result["negatives"])
            result["negatives"] = torch.stack(gathered)
    result |= {f"grad.{name}": p.grad.contiguous() for name, p in model.named_parameters() if p.grad is not None}
    if rank == 0:
        save_file(result, out)
    if world > 1:
        dist.barrier()  # every process done before any leaves
        os._exit(0)  # gloo's process-group teardown can hang at exit (seen on 2-core CI machines)


if __name__ == "__main__":
    main(*sys.argv[1:4], itm_only="--itm-only" in sys.argv)
