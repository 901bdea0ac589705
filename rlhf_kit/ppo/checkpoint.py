"""PPO checkpoints that survive a ``kill -9``: everything needed to continue exactly where a run stopped.

Every ``save_steps`` updates, ``<output_dir>/checkpoint-N/`` gets what Accelerate's ``save_state`` writes -- the
policy+value module and the optimizer as the launch holds them (whole, or each process's shard under ZeRO and
FSDP2), every process's RNG states, and the objects registered with ``register_for_checkpointing``: the LR
scheduler, the KL controller and the prompt order -- plus each process's PPO-ptx sampler, the trainer state
(update and episode counters, log history, accelerate's gradient-accumulation counter), the LoRA adapter on its own
and the configuration that shapes the optimisation. It is written as
``checkpoint-N.partial`` and renamed when complete (``checkpoint_complete.json`` inside, written last), so a kill
mid-save leaves the previous checkpoint as the newest complete one. Rerunning the same command resumes from it and,
on CPU with a fixed seed, ends with the same weights and metrics as a run that was never interrupted
(tests/test_ppo_resume.py). TRL's PPOTrainer took no checkpoint to resume from (trl #2657).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from rlhf_kit.core import work
from rlhf_kit.core.errors import UserError
from rlhf_kit.core.runs import changed_keys
from rlhf_kit.integrations.training import checkpoints, last_checkpoint

COMPLETE = "checkpoint_complete.json"



def _complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()  # written last, when the checkpoint is whole


def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete ``checkpoint-N`` folders, oldest first."""
    return [(n, p) for n, p in checkpoints(output_dir) if _complete(p)]


def last_complete_checkpoint(output_dir: str | Path, say=print) -> Path | None:
    """The newest complete checkpoint; an incomplete one is skipped, and said so."""
    path = last_checkpoint(output_dir, complete=_complete, say=lambda m: say(f"[ppo] {m}"))
    return Path(path) if path else None


def _rng_states() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class PPOCheckpointer:
    """Saves rlhf_kit's PPO trainer every ``save_steps`` updates and resumes it from the last complete checkpoint.

    ``config`` is the stage's resolved configuration (rlhf_kit.core.runs.resolve_config); it is stored in each
    checkpoint and compared on resume. ``resume=False`` (a forced rerun) starts afresh.
    """

    def __init__(self, output_dir: str, config: dict, save_strategy: str = "steps", save_total_limit: int | None = None,
                 resume: bool = True):
        self.output_dir, self.config = Path(output_dir), {k: v for k, v in config.items()}
        self.enabled = str(getattr(save_strategy, "value", save_strategy)) != "no"
        self.save_total_limit, self.resume_enabled = save_total_limit, resume

    def due(self, state) -> bool:
        """Whether the update just finished should be checkpointed."""
        return self.enabled and bool(state.save_steps) and state.global_step % state.save_steps == 0

    def _config(self, trainer) -> dict:
        acc = trainer.accelerator
        return {**self.config, "world_size": acc.num_processes, "distributed_type": acc.distributed_type.value}

    def save(self, trainer) -> Path:
        """Write ``checkpoint-<update>`` atomically (all processes call this)."""
        acc, state = trainer.accelerator, trainer.state
        final = self.output_dir / f"checkpoint-{state.global_step}"
        tmp = final.with_name(final.name + ".partial")
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp / "accelerate"))  # model, optimizer, RNG, registered objects (sharded where sharded)
        per_process = {"rng": _rng_states(), "prompts": trainer.prompt_batches.state_dict(),
                       "ptx": trainer.ptx_batches.state_dict() if trainer.ptx_batches else None}
        torch.save(per_process, tmp / f"process_{acc.process_index}.pt")
        full = trainer.full_policy_state_dict()  # a collective under FSDP2 / ZeRO-3
        if acc.is_main_process:
            policy = trainer.policy
            if hasattr(policy, "peft_config"):  # the LoRA adapter, loadable on its own
                policy.save_pretrained(tmp / "adapter", state_dict=full)
            record = {"global_step": state.global_step, "episode": state.episode, "log_history": state.log_history,
                      "accelerator_step": acc.step}
            (tmp / "trainer_state.json").write_text(json.dumps(record, indent=1))
            (tmp / "config.json").write_text(json.dumps(self._config(trainer), indent=1, sort_keys=True,
                                                        default=str))
            work.save(tmp)  # the wall time and tokens so far: a resumed stage's record counts the whole run
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / COMPLETE).write_text(json.dumps({"update": state.global_step, "episode": state.episode}))
            if final.exists():  # an incomplete folder of the same name, left by something else
                shutil.rmtree(final)
            tmp.rename(final)
            self._rotate(self._best_judged(trainer))
        acc.wait_for_everyone()
        return final

    def clear(self, is_main: bool = True) -> None:
        """Remove the checkpoints of an earlier run (a forced rerun starts over; they would shadow its own)."""
        if is_main:
            for _, path in checkpoints(self.output_dir):
                shutil.rmtree(path, ignore_errors=True)
            for path in self.output_dir.glob("checkpoint-*.partial"):
                shutil.rmtree(path, ignore_errors=True)

    def _best_judged(self, trainer) -> int | None:
        """With ``select_checkpoint: judge``, the complete checkpoint whose probe the judge scored best."""
        monitor = getattr(trainer, "monitor", None)
        if monitor is None or monitor.select != "judge":
            return None
        from rlhf_kit.ppo.monitor import best_update

        return best_update(trainer.state.log_history, {n for n, _ in complete_checkpoints(self.output_dir)})

    def _rotate(self, keep: int | None = None) -> None:
        """Keep the newest ``save_total_limit`` complete checkpoints, and checkpoint ``keep`` (the best-judged one,
        as transformers' Trainer keeps its best checkpoint)."""
        if not self.save_total_limit:
            return
        complete = complete_checkpoints(self.output_dir)
        for n, path in complete[: max(0, len(complete) - self.save_total_limit)]:
            if n != keep:
                shutil.rmtree(path, ignore_errors=True)

    def resume(self, trainer) -> int:
        """Restore the last complete checkpoint into ``trainer``; the number of updates it had done (0: none)."""
        acc = trainer.accelerator
        if not self.resume_enabled:
            return 0
        path = last_complete_checkpoint(self.output_dir, say=acc.print)
        if path is None:
            return 0
        saved = json.loads((path / "config.json").read_text())
        current = json.loads(json.dumps(self._config(trainer), default=str))
        changed = changed_keys(saved, current)
        launch = [k for k in ("world_size", "distributed_type") if k in changed]
        if launch:
            raise UserError(f"cannot resume PPO from {path}: it was saved by {saved.get('world_size')} process(es) "
                            f"under {saved.get('distributed_type')}, this launch has {current.get('world_size')} under "
                            f"{current.get('distributed_type')}; relaunch with the checkpoint's accelerate config and "
                            "number of processes, or pass --force true to start over")
        if changed:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:6])
            raise UserError(f"cannot resume PPO from {path}: the configuration changed ({detail}); rerun with the "
                            "checkpoint's settings, or pass --force true to start over")
        acc.load_state(str(path / "accelerate"))
        record = json.loads((path / "trainer_state.json").read_text())
        trainer.state.global_step, trainer.state.episode = record["global_step"], record["episode"]
        trainer.state.log_history = record["log_history"]
        trainer.state.epoch = trainer.state.episode / trainer.train_dataset_len
        acc.step = record["accelerator_step"]
        per_process = torch.load(path / f"process_{acc.process_index}.pt", weights_only=False)
        trainer.prompt_batches.load_state_dict(per_process["prompts"])
        if trainer.ptx_batches is not None:
            trainer.ptx_batches.load_state_dict(per_process["ptx"])
        _set_rng_states(per_process["rng"])  # last: replaying the prompt order above drew from the RNG
        work.resume(path)
        acc.print(f"[ppo] resuming from {path} (update {record['global_step']} of {trainer.args.num_total_batches}, "
                  f"episode {record['episode']})")
        return record["global_step"]
