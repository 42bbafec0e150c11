"""Phase 2 (`training.finetune.finetune`) from a config JSON, under torchrun. Any write by a process
other than rank 0 (weights, processor, results) is recorded in `output_dir/writes_by_rank_1.txt`.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/multiprocess/phase2_run.py CONFIG.json
"""

import json
import os
import sys
from pathlib import Path

from modeling_ilm import ILMForConditionalGeneration, ILMProcessor
from training.finetune import FinetuneConfig, finetune


def record_writes(cls, output_dir):
    original = cls.save_pretrained

    def save_pretrained(self, *args, **kwargs):
        with open(Path(output_dir) / f"writes_by_rank_{os.environ['RANK']}.txt", "a") as log:
            log.write(f"{cls.__name__}.save_pretrained{args[:1]}\n")
        return original(self, *args, **kwargs)

    cls.save_pretrained = save_pretrained


if __name__ == "__main__":
    config = FinetuneConfig(**json.loads(Path(sys.argv[1]).read_text()))
    if os.environ.get("RANK", "0") != "0":
        for cls in (ILMForConditionalGeneration, ILMProcessor):
            record_writes(cls, config.output_dir)
    finetune(config)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()  # every process done before any leaves
        os._exit(0)  # gloo's process-group teardown can hang at exit
