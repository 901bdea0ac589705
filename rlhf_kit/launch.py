"""``accelerate launch`` that exits with the recipe's status and no launcher traceback.

The recipe has already printed its one-line error; accelerate's launcher would add a ``CalledProcessError`` (one
process) or torchrun's ``ChildFailedError`` (several) traceback on top. Same arguments as ``accelerate launch``:

    python -m rlhf_kit.launch --config_file recipes/accelerate/cpu.yaml recipes/sft.py \
        --config recipes/configs/demo/sft.yaml
"""

import subprocess
import sys


def main() -> None:
    from accelerate.commands.launch import launch_command, launch_command_parser

    args = launch_command_parser().parse_args()
    try:
        launch_command(args)
    except subprocess.CalledProcessError as err:
        sys.exit(err.returncode)
    except Exception as err:  # torch.distributed.elastic's ChildFailedError
        failures = getattr(err, "failures", None)
        if failures is None:
            raise
        sys.exit(next((f.exitcode for f in failures.values() if f.exitcode), 1))


if __name__ == "__main__":
    main()
