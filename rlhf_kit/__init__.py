"""rlhf_kit: the InstructGPT recipe (SFT -> reward model -> PPO) on the Hugging Face stack."""

import logging
import sys
from pathlib import Path

__version__ = "0.1.0"

# bitsandbytes >= 0.50 warns at import, on every CPU with AVX-512 BF16, that it could not fetch an optional kernel
# from the Hub (which these machines never reach); its own fallback runs. Keep it out of every command's output.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def defer_bitsandbytes() -> None:
    """Keep bitsandbytes out of this process until a 4-bit load asks for it
    (``rlhf_kit.integrations.modeling.load_bitsandbytes``).

    peft imports bitsandbytes eagerly (``peft/helpers.py``) and bitsandbytes imports torch's compiler stack: about
    2 of a command's 9 s of imports on a 2-core CPU, for a library only QLoRA uses. A ``None`` entry in
    ``sys.modules`` makes Python refuse the import (the import system's documented behaviour) and peft's and
    transformers' availability checks read it as absent. Called for commands only (below, and ``rlhf-kit``), never
    on a library user's ``import rlhf_kit``, whose own ``import bitsandbytes`` must work.
    """
    if not {"bitsandbytes", "peft"} & sys.modules.keys():  # once peft is in, bitsandbytes is too
        sys.modules["bitsandbytes"] = None


if Path((getattr(sys, "argv", None) or [""])[0]).parent.name == "recipes":  # a recipe, also each accelerate worker
    defer_bitsandbytes()
