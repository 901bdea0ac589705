"""One stage's lifecycle, in one place and one order, so every recipe gets it right:

1. skip a finished stage (unless forced);
2. check a requested Hub push (id and token) before any model is loaded, so a long run never ends in a failed upload;
3. write the resolved configuration -- as asked, ``push_to_hub: true`` included -- and only then take the push over
   from the Trainer (whose checkpoint pushes hold neither the merged model nor the model card);
4. train, resuming from ``resume_from_checkpoint`` when given, else from the stage's last checkpoint;
5. write the completion marker, last;
6. push the finished stage.

    run = StageRun("sft", training_args.output_dir, script_args.force, training_args)
    if run.skipped:
        return
    ...load data and models...
    run.start(script_args, training_args, model_args)
    metrics = run.train(trainer)
    run.finish({"rows": len(dataset), "train_loss": metrics.get("train_loss")})
"""

from __future__ import annotations

import time

from rlhf_kit.core import runs
from rlhf_kit.integrations.training import train_with_resume
from rlhf_kit.run import hub


class StageRun:
    """The lifecycle above for the stage writing ``output_dir`` (steps 1 and 2 happen on construction)."""

    def __init__(self, stage: str, output_dir: str, force: bool = False, training_args=None):
        from accelerate import PartialState

        self.stage, self.output_dir, self.force = stage, str(output_dir), force
        self.training_args, self.is_main = training_args, PartialState().is_main_process
        self.started = time.time()
        self.skipped = runs.skip_if_complete(self.output_dir, stage, force)
        self.hub_id = None
        if not self.skipped and training_args is not None:
            self.hub_id = hub.check_push_request(training_args)

    def start(self, *configs) -> None:
        """Write the resolved configuration (main process), then take the Hub push over from the Trainer."""
        runs.start_stage(self.output_dir, self.stage, configs, self.is_main, self.started)
        if self.hub_id:
            self.training_args.push_to_hub = False  # pushed by finish(): merged model + model card

    def train(self, trainer) -> dict:
        """``trainer.train()`` from the explicit ``resume_from_checkpoint``, else the last checkpoint."""
        explicit = getattr(self.training_args, "resume_from_checkpoint", None)
        return train_with_resume(trainer, self.output_dir, self.force, explicit)

    def finish(self, summary: dict) -> None:
        """Completion marker (last file of the stage), then the push if one was asked for."""
        runs.finish_stage(self.output_dir, self.stage, summary, self.is_main)
        if self.hub_id and self.is_main:
            hub.push_stage(self.output_dir, self.hub_id)
