"""Phase 2 (`python -m training.finetune` arguments after the first two) that kills itself with
SIGKILL, as `kill -9` would: `after-step N` once step N is done (checkpoint N not yet written), or
`mid-save N` while checkpoint N is being written (its weights are on disk, its trainer state not)."""

import os
import signal
import sys

from transformers import TrainerCallback

from training import finetune

where, step = sys.argv[1], int(sys.argv[2])


def kill():
    os.kill(os.getpid(), signal.SIGKILL)


class KillAfterStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == step:
            kill()


def build_trainer(config, build=finetune.build_trainer):
    trainer, processor, lengths = build(config)
    if where == "after-step":
        trainer.add_callback(KillAfterStep())
    else:
        save = trainer._save

        def save_then_kill(output_dir=None, state_dict=None):
            save(output_dir, state_dict)
            if str(output_dir).endswith(f"checkpoint-{step}"):
                kill()

        trainer._save = save_then_kill
    return trainer, processor, lengths


finetune.build_trainer = build_trainer
finetune.main(sys.argv[3:])
