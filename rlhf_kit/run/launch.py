"""``accelerate launch`` that exits with the recipe's status and no launcher traceback.

The recipe has already printed its one-line error; accelerate's launcher would add a ``CalledProcessError`` (one
process) or torchrun's ``ChildFailedError`` (several) traceback on top. Same arguments as ``accelerate launch``:

    python -m rlhf_kit.run.launch --config_file recipes/accelerate/cpu.yaml recipes/sft.py \
        --config recipes/configs/demo/sft.yaml
"""

import os
import socket
import subprocess
import sys

import yaml

from rlhf_kit.core.errors import UserError, exit_on_user_error
from rlhf_kit.core.stages import STAGES
from rlhf_kit.integrations.hardware import CONFIG_ENV, check_accelerate_config, share_bf16_speedup
from rlhf_kit.run.configs import skip_exit_collection

# Command-line flags of `accelerate launch` that override the config file's value of the same name.
OVERRIDES = ("num_processes", "num_machines", "machine_rank", "main_process_ip", "mixed_precision")


def stage_command(stage: str, config: str, flags: list[str] = (), accelerate_config: str | None = None) -> list[str]:
    """The command that runs one stage's recipe with ``config`` plus ``flags`` (``--key value`` overrides), as
    ``make <stage>`` does: training stages through this launcher with the accelerate config (hardware; default the
    shipped ``cpu.yaml``), the others as plain processes."""
    from rlhf_kit.core.paths import recipe_path, shipped

    launcher = []
    if STAGES[stage].launched:
        hardware = accelerate_config or str(shipped("recipes") / "accelerate" / "cpu.yaml")
        launcher = ["-m", "rlhf_kit.run.launch", "--config_file", hardware]
    return [sys.executable, *launcher, str(recipe_path(stage)), "--config", str(config), *flags]


def check_launch(args) -> dict:
    """The accelerate config this launch will use (file, then command-line overrides), refused if it cannot run."""
    config, name = {}, "accelerate launch"
    if args.config_file:
        name = args.config_file
        try:
            with open(args.config_file) as f:
                config = yaml.safe_load(f) or {}
        except OSError:
            raise UserError(f"accelerate config {args.config_file} not found; pass one of recipes/accelerate/*.yaml")
    config.update({k: getattr(args, k) for k in OVERRIDES if getattr(args, k, None) is not None})
    for flag, kind in (("use_fsdp", "FSDP"), ("use_deepspeed", "DEEPSPEED"), ("multi_gpu", "MULTI_GPU")):
        if getattr(args, flag, False):
            config["distributed_type"] = kind
    if getattr(args, "cpu", False):
        config["use_cpu"] = True
    check_accelerate_config(config, name)
    return config


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_port(args, config: dict) -> None:
    """One machine, several processes, no port given (``config``: :func:`check_launch`'s): a free port instead of
    accelerate's fixed 29500, so two launches on one machine (two ``make`` runs, a test suite in parallel) do not
    refuse each other. Several machines must agree on the port, so there the config's or the flag's stays."""
    if args.main_process_port is None and config.get("main_process_port") is None \
            and int(config.get("num_machines") or 1) == 1:
        args.main_process_port = free_port()


def main() -> None:
    from accelerate.commands.launch import launch_command, launch_command_parser

    args = launch_command_parser().parse_args()
    config = exit_on_user_error(lambda: check_launch(args))
    pick_port(args, config)
    if args.config_file:
        os.environ[CONFIG_ENV] = args.config_file  # the ranks' one-line errors name the config
    if int(config.get("num_processes") or 1) > 1:
        share_bf16_speedup()  # several ranks: every rank's `bf16: auto` reads one measurement
    try:
        launch_command(args)
    except subprocess.CalledProcessError as err:
        sys.exit(err.returncode)
    except Exception as err:  # torch.distributed.elastic's ChildFailedError
        failures = getattr(err, "failures", None)
        if failures is None:
            raise
        sys.exit(next((f.exitcode for f in failures.values() if f.exitcode), 1))
    finally:
        skip_exit_collection()  # the launcher imported torch and accelerate too


if __name__ == "__main__":
    main()
