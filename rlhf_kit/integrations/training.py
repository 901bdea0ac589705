"""Running a TRL trainer inside a stage: logging, resume from the last checkpoint, metrics for the summary."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def setup_run(training_args=None, seed: int | None = None) -> None:
    """Logging (``level name: message`` on the main process, warnings elsewhere) and every RNG seeded.

    Seeding here, before any model is loaded, fixes the initial LoRA matrices (TRL builds the adapter before the
    Trainer seeds) and the fresh reward head (initialised by ``from_pretrained``): same seed, same run.
    """
    import datasets
    import transformers

    seed = training_args.seed if seed is None and training_args is not None else seed
    if seed is not None:
        transformers.set_seed(seed)
    is_main = training_args is None or training_args.process_index == 0
    level = logging.INFO if is_main else logging.WARNING
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout, level=level)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()  # keep the trainer's progress bar the only one


def apply_global_batch(global_batch_size: int | None, training_args) -> None:
    """Set the per-device batch from a global batch; refuse one the processes cannot share evenly."""
    from accelerate import PartialState

    from rlhf_kit.core.errors import UserError

    if not global_batch_size:
        return
    # PartialState: the launch's process count, known before any trainer (or its accelerator) exists.
    world, accum = PartialState().num_processes, training_args.gradient_accumulation_steps
    if global_batch_size % (world * accum):
        raise UserError(f"global_batch_size={global_batch_size} is not divisible by world size {world} x "
                        f"gradient_accumulation_steps {accum}; use a multiple of {world * accum}")
    training_args.per_device_train_batch_size = global_batch_size // (world * accum)


def report_rank(trainer, stage: str) -> None:
    """Each process says how many optimizer steps it took, and how (all ranks train; only the main one writes)."""
    acc = trainer.accelerator
    how = acc.distributed_type.value  # NO, MULTI_CPU / MULTI_GPU (data parallel), FSDP, DEEPSPEED
    print(f"[{stage}] rank {acc.process_index}/{acc.num_processes} trained {trainer.state.global_step} steps ({how})")


def gather_full_state_dict(accelerator, model, engine=None) -> dict | None:
    """The full weights of a sharded (FSDP, ZeRO-3) ``model`` as ``accelerator`` prepared it (``engine``: the
    DeepSpeed engine around it, where that is another object, as a Trainer's ``model_wrapped``), on the main
    process; None when parameters are not sharded.

    A collective: every rank must call it, before the main process saves.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    acc = accelerator
    ds = getattr(acc.state, "deepspeed_plugin", None)
    if ds is not None and ds.zero_stage == 3:
        # DeepSpeed gathers the partitioned parameters itself (zero3_save_16bit_model: true in the config)
        return acc.get_state_dict(engine if engine is not None else model)
    if getattr(acc.state, "fsdp_plugin", None) is None:
        return None
    # torch's own gather (accelerate 1.15's get_state_dict hands back the DTensor shards here): full tensors, on the
    # CPU, on rank 0 only.
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``checkpoint-N`` folders (transformers' naming, ``PREFIX_CHECKPOINT_DIR``), complete or not, oldest first:
    ordered by step number, not by name (checkpoint-10 after checkpoint-9)."""
    import re

    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    out = Path(output_dir)
    if not out.is_dir():
        return []
    pattern = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
    return sorted((int(m.group(1)), p) for p in out.iterdir() if (m := pattern.fullmatch(p.name)) and p.is_dir())


def _trainer_state_written(path: Path) -> bool:
    # The Trainer writes trainer_state.json last when it saves a checkpoint (transformers' `_save_checkpoint`), so a
    # folder without a readable one was cut short by a kill.
    import json

    try:
        json.loads((path / "trainer_state.json").read_text())
        return True
    except (OSError, ValueError):
        return False


def last_checkpoint(output_dir: str | os.PathLike, complete=_trainer_state_written, say=print) -> str | None:
    """The newest complete ``checkpoint-N`` folder to resume from (an interrupted stage continues, never restarts).

    ``complete(path)`` says whether a checkpoint was saved whole (default: the Trainer's ``trainer_state.json`` is
    readable; PPO passes its own marker): a half-written one is skipped, and said so, for the one before it.
    """
    for _, path in reversed(checkpoints(output_dir)):
        if complete(path):
            return str(path)
        say(f"ignoring incomplete checkpoint {path} (killed while saving); using the one before it")
    return None


def _keep_work_callback():
    """A TrainerCallback that keeps the work and wall time so far in each checkpoint the Trainer saves (on_save runs
    after ``_save_checkpoint`` has written the folder)."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    from rlhf_kit.core import work

    class KeepWork(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if state.is_world_process_zero and folder.is_dir():
                work.save(folder)

    return KeepWork()


def train_with_resume(trainer, output_dir: str, force: bool = False, checkpoint: str | None = None) -> dict:
    """``trainer.train()`` from ``checkpoint`` when given, else from the last checkpoint unless forced to redo;
    returns the train metrics."""
    from rlhf_kit.core.errors import UserError

    if checkpoint and not os.path.isdir(checkpoint):
        raise UserError(f"resume_from_checkpoint {checkpoint} is not a folder; pass a checkpoint-N folder or leave it "
                        "unset to continue from the last one")
    from rlhf_kit.core import work

    checkpoint = checkpoint or (None if force else last_checkpoint(output_dir))
    if checkpoint:
        print(f"resuming from {checkpoint}")
        work.resume(checkpoint)  # the wall time and work spent before it: the record counts the whole run
    trainer.add_callback(_keep_work_callback())
    result = trainer.train(resume_from_checkpoint=checkpoint)

    # TRL's trainers log the tokens they trained on as num_tokens (from the start, a resumed run's too); a plain
    # Trainer counts them when asked (include_num_input_tokens_seen); rlhf_kit's PPO counts its own.
    seen = last_logged(trainer, ["num_tokens"]).get("num_tokens") or getattr(trainer.state, "num_input_tokens_seen", 0)
    work.count("trained", seen or 0)
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

    Path(output_dir, "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
