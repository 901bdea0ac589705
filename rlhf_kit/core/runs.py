"""Stage output folders ``runs/<name>/<stage>/``: resolved config first, completion marker last.

A stage is finished only when its marker exists, so an interrupted stage is never taken for a finished one.
A finished stage is skipped unless forced; an unfinished one is continued (trainer checkpoints) or redone, never
deleted.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import yaml

from rlhf_kit.core.errors import UserError
from rlhf_kit.core.stages import hint

MARKER = "stage_complete.json"
RESOLVED_CONFIG = "rlhf_kit_config.yaml"


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a file so that a reader never sees it half-written (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def resumable(path: str | os.PathLike, key: dict, make, what: str) -> tuple[object, bool]:
    """``make()``'s result (plain JSON values), kept in ``path`` with ``key`` so that a stage killed after making it
    reads it back on its rerun instead of making it again: a long stage's finished parts survive a kill (the eval
    stage's sampling, an hour per policy on a CPU). Only a file whose ``key`` equals this one is reused; anything
    else (another policy checkpoint, prompt set, sampling setting) is made afresh and replaces it. Returns the
    value and whether it was reused."""
    path = Path(path)
    key = json.loads(json.dumps(key))  # as the file holds it: tuples become lists
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            print(f"{what}: reused from {path} (made before the stage was stopped)")
            return saved["value"], True
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"key": key, "value": value}))
    return value, False


# Settings that may differ between a run and its continuation (a resumed PPO stage, a continued rounds run): where
# and how it logs, saves, evaluates samples and pushes. Precision too: it is hardware (`bf16: auto` / `dtype: auto`
# resolve per machine, so a run continued on another CPU may get the other one), and the weights and optimizer
# state it continues from are float32 either way. Any other difference (batch sizes, models, data, learning rate,
# seed, ...) changes the optimisation: refused.
MAY_CHANGE = frozenset({"force", "report_to", "run_name", "project", "disable_tqdm", "push_to_hub",
                        "num_sample_generations", "resume_from_checkpoint", "skip_memory_metrics", "ddp_timeout",
                        "bf16", "dtype", "mixed_precision"})
MAY_CHANGE_PREFIXES = ("logging_", "log_", "save_", "hub_", "eval_", "trackio_", "per_device_eval_batch_size")


def changed_keys(saved: dict, current: dict, also_free=(), one_sided: bool = False) -> list[str]:
    """Configuration keys whose change alters the optimisation, sorted; ``also_free`` adds keys that may change.

    A key only one side has (e.g. added by a newer rlhf_kit to a resolved config) is compared only when
    ``one_sided``: a rounds run compares the stage YAMLs people write, where an added key is a changed setting.
    """
    keys = set(saved) | set(current) if one_sided else set(saved) & set(current)
    return sorted(k for k in keys - MAY_CHANGE - set(also_free)
                  if not k.startswith(MAY_CHANGE_PREFIXES) and saved.get(k) != current.get(k))


def is_complete(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a finished stage output."""
    return (Path(path) / MARKER).is_file()


def is_hub_id(name: str, owner: bool = False) -> bool:
    """Whether ``name`` is a repository id as the Hub accepts it (``huggingface_hub``'s own check), ``owner/name``
    when ``owner``, else ``name`` alone too."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return "/" in name or not owner


def looks_like_hub_id(name: str) -> bool:
    """``org/name`` or ``name`` with no local meaning (not an existing path, not ``./`` or absolute)."""
    return is_hub_id(name) and not os.path.exists(name) and not name.startswith(("runs/", "."))


def require_stage_output(path: str, what: str) -> None:
    """Refuse a previous stage's output that is missing or unfinished; Hub ids pass through to the loaders."""
    p = Path(path)
    if p.exists():
        if (p / RESOLVED_CONFIG).is_file() and not is_complete(p):
            raise UserError(f"{what} {path} is unfinished (no {MARKER}); rerun that stage to complete it")
        return
    if not looks_like_hub_id(path):
        raise UserError(f"{what} {path} not found; {hint(Path(path).name)}")


def require_complete_stage(path: str, what: str) -> None:
    """Refuse a stage folder that is missing or unfinished (``what`` leads the message)."""
    if not is_complete(path):
        state = "unfinished" if Path(path).exists() else "missing"
        raise UserError(f"{what} {path} is {state}; {hint(Path(path).name)}")


def skip_if_complete(output_dir: str, stage: str, force: bool) -> bool:
    """True (and say so) when the stage's output is already complete and the run is not forced."""
    if is_complete(output_dir) and not force:
        print(f"[{stage}] already complete in {output_dir}; skipping (pass --force true to redo it)")
        return True
    return False


def start_stage(output_dir: str, stage: str, configs: tuple, is_main: bool = True,
                started: float | None = None) -> None:
    """Create ``output_dir``, drop an old marker (a forced rerun is unfinished until it ends), write the config;
    the stage's work is counted from ``started`` (a ``time.time()``, default now)."""
    from rlhf_kit.core import work

    work.reset(started)
    if not is_main:
        return
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    (out / RESOLVED_CONFIG).write_text(yaml.safe_dump(resolve_config(stage, configs), sort_keys=True))


def resolve_config(stage: str, configs: tuple) -> dict:
    """The stage's configuration as one flat mapping of plain values (what ``start_stage`` writes)."""
    resolved = {"stage": stage}
    for cfg in configs:
        resolved.update(cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg))
    return {k: v for k, v in resolved.items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))}


def finish_stage(output_dir: str, stage: str, summary: dict, is_main: bool = True) -> None:
    """Write the completion marker (last) and print the stage's one-line summary. Its wall time is counted from
    ``start_stage``'s ``started``; a resumed stage's includes the seconds before its checkpoint (``resumed_seconds``,
    rlhf_kit.core.work)."""
    from accelerate import PartialState

    from rlhf_kit.core import work

    carried, wall = work.carried_seconds(), work.elapsed()
    if not is_main:
        return
    record = {"stage": stage, "wall_seconds": round(wall, 2), "world_size": PartialState().num_processes,
              **work.record(), **summary}
    if carried:
        record["resumed_seconds"] = round(carried, 2)
    write_atomic(Path(output_dir) / MARKER, json.dumps(record, indent=2))
    parts = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
    print(f"[{stage}] done in {wall:.1f}s: {parts} -> {output_dir}")


def read_config(path: str) -> dict:
    """The resolved configuration a stage wrote when it started."""
    return yaml.safe_load((Path(path) / RESOLVED_CONFIG).read_text())


def read_marker(path: str) -> dict:
    """The completion record of a finished stage."""
    return json.loads((Path(path) / MARKER).read_text())
