"""Running a TRL trainer inside a stage: logging, resume from the last checkpoint, metrics for the summary."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(training_args=None) -> None:
    """Plain ``level name: message`` logging on the main process, warnings only elsewhere."""
    import datasets
    import transformers

    is_main = training_args is None or training_args.process_index == 0
    level = logging.INFO if is_main else logging.WARNING
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout, level=level)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()  # keep the trainer's progress bar the only one


def last_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-N`` folder to resume from (an interrupted stage continues, never restarts)."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


def train_with_resume(trainer, output_dir: str, force: bool = False) -> dict:
    """``trainer.train()``, resuming from the last checkpoint unless forced to redo; returns the train metrics."""
    checkpoint = None if force else last_checkpoint(output_dir)
    if checkpoint:
        print(f"resuming from {checkpoint}")
    result = trainer.train(resume_from_checkpoint=checkpoint)
    return dict(result.metrics)


def last_logged(trainer, keys: list[str]) -> dict:
    """The last logged value of each key in the trainer's history (for the stage summary)."""
    found = {}
    for record in reversed(trainer.state.log_history):
        for key in keys:
            if key in record and key not in found:
                found[key] = record[key]
    return found


def save_log_history(trainer, output_dir: str) -> None:
    """Keep the trainer's logged metrics as ``log_history.json`` (the report plots PPO's from it)."""
    import json
    from pathlib import Path

    Path(output_dir, "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
