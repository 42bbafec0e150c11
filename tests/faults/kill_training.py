"""A training phase (`phase1` or `phase2`, then `python -m training.pretrain|finetune` arguments)
that kills itself with SIGKILL, as `kill -9` would: `after-step N` once step N is done (checkpoint N
not yet written), or `mid-save N` while checkpoint N is being written (its weights are on disk, its
trainer state not).

    python tests/faults/kill_training.py phase1 mid-save 4 --config run.yaml
"""

import os
import signal
import sys

from transformers import TrainerCallback

from training import finetune, pretrain

phase, where, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
module = {"phase1": pretrain, "phase2": finetune}[phase]


def kill():
    os.kill(os.getpid(), signal.SIGKILL)


class KillAfterStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == step:
            kill()


def build_trainer(config, build=module.build_trainer):
    built = build(config)
    trainer = built[0]
    if where == "after-step":
        trainer.add_callback(KillAfterStep())
    else:
        save = trainer._save

        def save_then_kill(output_dir=None, state_dict=None):
            save(output_dir, state_dict)
            if str(output_dir).endswith(f"checkpoint-{step}"):
                kill()

        trainer._save = save_then_kill
    return built


module.build_trainer = build_trainer
module.main(sys.argv[4:])
