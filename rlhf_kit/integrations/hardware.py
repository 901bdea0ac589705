"""Hardware checks for a launch: an accelerate config that cannot run here, or a stage that cannot run under it.

Each mistake is one line before any process starts or any model loads (accelerate itself would assert with a
traceback, or a rank would fail minutes later inside a collective). Two entry points:

- ``check_accelerate_config``: the launcher's config (``python -m rlhf_kit.run.launch`` / ``make <stage>``);
- ``check_stage_hardware``: a recipe's parsed arguments against the sharding accelerate launched it with (read from
  the environment ``accelerate launch`` gives its processes), so plain ``accelerate launch`` is checked too.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from rlhf_kit.core.errors import UserError

SHARDED = ("FSDP", "DEEPSPEED")
CONFIG_ENV = "RLHF_KIT_ACCELERATE_CONFIG"  # set by rlhf_kit.run.launch so a rank's error can name the config file
# Where the CPU's flags are read from; RLHF_KIT_CPUINFO points a whole run at a fake one (the precision tests run
# the real track's configs as a CPU without AMX or AVX512-BF16 would).
CPUINFO_ENV = "RLHF_KIT_CPUINFO"


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags from ``cpuinfo`` (x86 ``flags``, Arm ``Features``), or None if it cannot be read."""
    if cpuinfo == "/proc/cpuinfo":
        cpuinfo = os.environ.get(CPUINFO_ENV) or cpuinfo
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def cpu_supports_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes in bfloat16 natively (x86 AVX512-BF16 or AMX-BF16; Arm BF16).

    Without it PyTorch emulates bf16 matmuls, which is many times slower than float32 and defeats mixed precision.
    An unreadable cpuinfo (not Linux) counts as supported: we refuse only what we know cannot run well.
    """
    flags = cpu_flags(cpuinfo)
    return flags is None or bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def configure(env=None) -> str | None:
    """The process-wide settings a launch needs on this machine, made once by the recipe runner before parsing
    (:func:`rlhf_kit.run.configs.run_recipe`): environment variables and accelerate workarounds that make CPU
    process groups train as the accelerate config says. Returns the line it logged (rank 0, stderr), or None on a
    GPU, where nothing is needed.

    - ``ACCELERATE_USE_CPU=true``: accelerate's multi-process launcher does not pass ``use_cpu`` to the ranks (or
      passes False for a GPU config); without it they see no GPU, pick ``DistributedType.NO`` and each trains alone,
      with it they form a gloo data-parallel group.
    - DeepSpeed instead: ``DS_ACCELERATOR=cpu`` and ``ACCELERATE_USE_CPU=false`` (accelerate 1.15 keeps DeepSpeed
      only for a process not marked CPU); the parser then defaults ``ddp_backend`` to gloo (:func:`cpu_defaults`).
    - FSDP: accelerate's state switched to FSDP for CPU process groups given an FSDP plugin (``_fsdp_on_cpu``).
    """
    env = os.environ if env is None else env
    if has_gpu():
        return None
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        env.setdefault("DS_ACCELERATOR", "cpu")
        env["ACCELERATE_USE_CPU"] = "false"
        done = [f"DS_ACCELERATOR={env['DS_ACCELERATOR']}", "ACCELERATE_USE_CPU=false (DeepSpeed over gloo)"]
    else:
        env["ACCELERATE_USE_CPU"] = "true"
        done = ["ACCELERATE_USE_CPU=true"]
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        _fsdp_on_cpu()
        done.append("accelerate's FSDP enabled for CPU process groups")
    line = f"hardware: no GPU; set {', '.join(done)}"
    if int(env.get("RANK", "0")) == 0 and int(env.get("WORLD_SIZE", "1")) > 1:  # only launches with ranks need it
        print(line, file=sys.stderr)
    return line


def _fsdp_on_cpu() -> None:
    """Let an FSDP accelerate config shard on CPU processes (gloo) instead of silently running DDP.

    accelerate 1.15 turns on FSDP only for GPU-like process groups (``AcceleratorState`` checks for MULTI_GPU & co.),
    so ``accelerate launch`` with an FSDP config and ``use_cpu: true`` trains plain DDP. PyTorch's FSDP2
    (``fully_shard``) runs on CPU meshes with gloo, so once the state is built we switch a CPU process group that
    was given an FSDP plugin to FSDP, as accelerate does on GPUs. Pinned by tests/test_fsdp.py.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__
    if getattr(init, "rlhf_kit_cpu_fsdp", False):
        return

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = self.distributed_type  # as AcceleratorState does
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)

    __init__.rlhf_kit_cpu_fsdp = True
    AcceleratorState.__init__ = __init__


def cpu_defaults(dataclass_types: tuple, env=None) -> dict:
    """Parser defaults for a stage without a GPU (a config or flag still overrides them):

    - ``use_cpu: true`` where the dataclasses have it (what ``ACCELERATE_USE_CPU`` already says): transformers
      accepts ``bf16: true`` on a CPU only then, and accelerate trains under CPU autocast in bf16; :func:`check_bf16`
      refuses bf16 where the CPU lacks it;
    - under DeepSpeed instead ``ddp_backend: gloo``: accelerate 1.15 treats a DeepSpeed process without a GPU as
      "no backend, no distribution" (one process of one), so DeepSpeed's batch check fails against the real world
      size; gloo gives accelerate a backend, and DeepSpeed's CPU accelerator then trains the real group (it must not
      be marked CPU: with ``use_cpu`` accelerate drops DeepSpeed for DDP).
    """
    env = os.environ if env is None else env
    if has_gpu():
        return {}
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return {"ddp_backend": "gloo"}
    if any("use_cpu" in getattr(dc, "__dataclass_fields__", {}) for dc in dataclass_types):
        return {"use_cpu": True}
    return {}


def check_bf16(parsed: tuple) -> None:
    """Refuse bf16 training (``bf16: true``) or bf16 models (``dtype: bfloat16``) on a CPU without native bf16, where
    PyTorch emulates it many times slower than float32; for training on one with native bf16 whose bf16 matmuls
    measure no faster than float32's, say in one note that float32 is the faster choice there (sampling in bf16 pays
    on any of them: see :func:`auto_precision`)."""
    asked = [(key, value, "training" if key == "bf16" else workload(args))
             for args in parsed for key, value in (("bf16", True), ("dtype", "bfloat16"))
             if getattr(args, key, None) == value]
    if not asked or has_gpu():
        return
    fixes = {"bf16": "bf16: false", "dtype": "dtype: float32"}
    key, value, _ = asked[0]
    if not cpu_supports_bf16():
        raise UserError(f"{key}: {str(value).lower()} needs a GPU or a CPU with native bf16 (AMX-BF16 or "
                        f"AVX512-BF16 in /proc/cpuinfo), and this CPU has neither; set `{fixes[key]}` in the config")
    training = [(k, v) for k, v, w in asked if w == "training"]
    if training:  # runs, but where bf16 gains nothing it only rounds more (docs/benchmarks.md: bf16 vs float32)
        pays, why = auto_precision("training")
        if not pays:
            key, value = training[0]
            print(f"note: {key}: {str(value).lower()} gains nothing here ({why}); `{fixes[key]}` is the faster "
                  f"choice", file=sys.stderr)


def workload(args) -> str:
    """What a stage's arguments use precision for: ``precision_workload`` of their class (the sampling stages'
    arguments say ``sampling``), else ``training`` (TRL's ModelConfig: a model trained or trained against)."""
    return getattr(type(args), "precision_workload", "training")


AUTO = "auto"


def auto_precision(workload: str = "training", cpuinfo: str = "/proc/cpuinfo") -> tuple[bool, str]:
    """What ``bf16: auto`` / ``dtype: auto`` mean here for a ``workload`` (``training`` or ``sampling``): (bf16?, why).
    bf16 only where it is native *and* pays. On a CUDA GPU with bf16 (Ampere or later), always. On a CPU with
    AMX-BF16, always (bf16 matmuls ~4x float32). On one with AVX512-BF16 (or Arm's BF16) but no AMX: for sampling
    always, since decoding one token at a time is bound by reading the weights, and bf16 reads half the bytes; for
    training where this CPU's bf16 matmuls measure at least :data:`BF16_TRAINING_SPEEDUP` times float32's
    (:func:`bf16_matmul_speedup`): the flags do not say it (docs/benchmarks.md, *Sampling and precision*: 0.9x on one
    such Xeon in 2026-11, 4.2x on another and 4.3x on an AMD EPYC in 2026-12). Without native bf16, PyTorch emulates
    it, many times slower: float32."""
    if has_gpu():
        import torch

        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported():
            return True, f"CUDA GPU {name} computes in bf16 natively"
        return False, f"CUDA GPU {name} has no native bf16 (before Ampere)"
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return False, f"cannot read {cpuinfo} to tell whether this CPU computes in bf16; float32 is the safe choice"
    if "amx_bf16" in flags:
        return True, "CPU with AMX-BF16: bf16 matmuls ~4x float32"
    if flags & {"avx512_bf16", "bf16"}:
        if workload == "sampling":
            return True, "sampling on a CPU with AVX512-BF16: decoding reads half the bytes in bf16, ~1.5x float32"
        speedup = bf16_matmul_speedup()
        measured = f"training on a CPU with AVX512-BF16, no AMX: bf16 matmuls measured {speedup:.1f}x float32 here"
        if speedup >= BF16_TRAINING_SPEEDUP:
            return True, measured
        return False, f"{measured}, no faster than float32"
    return False, "CPU without native bf16 (no AMX-BF16 or AVX512-BF16): bf16 would be emulated, many times slower"


# bf16 training only where its matmuls are clearly faster: mixed precision also rounds more (autocast's bf16 keeps 8
# bits of mantissa), so a tie goes to float32. The CPUs seen so far sit far on either side (0.9x; 4.2x, 4.3x).
BF16_TRAINING_SPEEDUP = 1.5


# One measurement for all of a launch's ranks: measured apart, two ranks near the threshold could choose different
# precisions and train one model in two dtypes. rlhf_kit.run.launch measures before the ranks start and sets it.
SPEEDUP_ENV = "RLHF_KIT_BF16_SPEEDUP"


@functools.cache
def bf16_matmul_speedup() -> float:
    """This CPU's bf16 matmul throughput over its float32 one, measured once per process (1024 x 1024, about half a
    second), or the launcher's measurement (:data:`SPEEDUP_ENV`, :func:`share_bf16_speedup`): what decides
    ``bf16: auto`` for training on a CPU with AVX512-BF16 but no AMX."""
    try:
        return float(os.environ[SPEEDUP_ENV])
    except (KeyError, ValueError):
        return matmul_gflops("bfloat16", seconds=0.2) / matmul_gflops("float32", seconds=0.2)


def share_bf16_speedup(env=None) -> None:
    """In a launcher, before its ranks start: decide ``auto`` for training as a rank would (:func:`auto_precision`
    measures only where the flags do not decide) and, if that measured, put the figure in ``env`` (default
    ``os.environ``) for every rank to read."""
    env = os.environ if env is None else env
    if SPEEDUP_ENV not in env:
        auto_precision("training")
        if bf16_matmul_speedup.cache_info().currsize:  # measured (or read) for this decision
            env[SPEEDUP_ENV] = f"{bf16_matmul_speedup():.3f}"


def matmul_gflops(dtype: str = "float32", n: int = 1024, seconds: float = 1.0) -> float:
    """This machine's measured throughput for ``n`` x ``n`` matmuls in ``dtype`` (GFLOP/s, the median of a
    ``seconds``-long run after a warm-up): the yardstick that makes a stage's tokens per second comparable across
    the CPUs this project runs on (AMX, AVX512-BF16 only, neither), whose flags alone do not say how fast they are."""
    import statistics
    import time

    import torch

    a, b = (torch.randn(n, n, dtype=getattr(torch, dtype)) for _ in range(2))
    for _ in range(3):
        a @ b
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * n**3 / statistics.median(times) / 1e9

def resolve_auto_bf16(config: dict, argv: list[str]) -> tuple[list[str], str | None]:
    """``bf16: auto`` (config file or ``--bf16 auto``) made a plain boolean flag before TrainingArguments (a bool
    field: mixed-precision training) parses it: (argv to parse, what was chosen and why, or None when nothing was
    auto). A ``--bf16`` given on the command line still overrides the config file."""
    flag = next((i for i, a in enumerate(argv) if a == "--bf16" or a.startswith("--bf16=")), None)
    if flag is not None:
        value = argv[flag].partition("=")[2] if "=" in argv[flag] else (argv[flag + 1] if flag + 1 < len(argv)
                                                                          else "")
        if value.lower() != AUTO:
            return argv, None
        argv = argv[:flag] + argv[flag + (1 if "=" in argv[flag] else 2):]
    elif str(config.get("bf16")).lower() != AUTO:
        return argv, None
    bf16, why = auto_precision("training")
    return argv + ["--bf16", str(bf16).lower()], f"bf16: auto -> {str(bf16).lower()} ({why})"


def resolve_auto_dtype(parsed: tuple) -> list[str]:
    """Each parsed ``dtype: auto`` set to bfloat16 or float32 by :func:`auto_precision`, for the workload its
    arguments declare (``precision_workload``: the sampling stages' arguments say ``sampling``; a model trained or
    trained against, TRL's ModelConfig, is ``training``). rlhf_kit's meaning of auto is by hardware, not
    transformers' "the checkpoint's dtype" (rlhf_kit's own checkpoints are float32 on disk). Returns what was chosen
    and why, one entry per dtype set."""
    chosen = []
    for args in parsed:
        if getattr(args, "dtype", None) == AUTO:
            bf16, why = auto_precision(workload(args))
            args.dtype = "bfloat16" if bf16 else "float32"
            chosen.append(f"dtype: auto -> {args.dtype} ({why})")
    return chosen


def precision_line(choices: list[str]) -> str:
    """``key: auto -> value (why)`` choices as one line, each reason said once: "bf16: auto -> false, dtype: auto ->
    float32 (why)"."""
    groups: dict[str, list[str]] = {}
    for choice in choices:
        what, _, why = choice.partition(" (")
        groups.setdefault(why, []).append(what)
    return "; ".join(f"{', '.join(whats)} ({why}" for why, whats in groups.items())


def has_gpu() -> bool:
    """Whether a CUDA GPU is visible (otherwise every process runs on the CPU)."""
    import torch

    return torch.cuda.is_available()


def check_accelerate_config(config: dict, name: str) -> None:
    """Refuse an accelerate config (file values with command-line overrides applied) that cannot launch here."""
    kind = str(config.get("distributed_type", "NO"))
    machines = int(config.get("num_machines") or 1)
    processes = int(config.get("num_processes") or 1)
    if processes % machines:
        raise UserError(f"{name}: num_processes={processes} (all machines together) is not divisible by "
                        f"num_machines={machines}; use processes per machine x num_machines")
    if machines > 1 and not config.get("main_process_ip"):
        raise UserError(f"{name}: num_machines={machines} but no main_process_ip; pass --main_process_ip <address of "
                        "the machine_rank 0 node> (and the same --main_process_port) on every node")
    on_cpu = bool(config.get("use_cpu")) or not has_gpu()
    if kind in SHARDED and str(config.get("mixed_precision", "no")) == "bf16" and on_cpu and not cpu_supports_bf16():
        raise UserError(f"{name}: mixed_precision bf16 with {kind} on a CPU without bf16 support (no avx512_bf16 or "
                        "amx_bf16 in /proc/cpuinfo); set mixed_precision: \"no\" or pass --mixed_precision no")


def launched_sharding(env=None) -> str | None:
    """The sharding ``accelerate launch`` started this process with: 'FSDP', 'ZeRO-<stage>', or None."""
    env = os.environ if env is None else env
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "FSDP"
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return f"ZeRO-{env.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '?')}"
    return None


def check_stage_hardware(parsed: tuple, env=None) -> None:
    """Refuse a stage the launched sharding cannot run (called on the parsed arguments, before any model loads)."""
    from rlhf_kit.integrations.trl import ModelConfig

    env = os.environ if env is None else env
    sharding = launched_sharding(env)
    if sharding is None:
        return
    config = env.get(CONFIG_ENV) or f"the accelerate config ({sharding})"
    model_args = next((a for a in parsed if isinstance(a, ModelConfig)), None)
    if sharding in ("FSDP", "ZeRO-3") and model_args is not None and model_args.load_in_4bit:
        raise UserError(f"load_in_4bit (QLoRA) cannot run under {sharding} ({config}): bitsandbytes packs 4-bit "
                        "weights into uint8 blocks that this sharding cannot split; use a data-parallel config "
                        "(recipes/accelerate/multi_gpu.yaml or cpu_2proc.yaml) or drop load_in_4bit")
