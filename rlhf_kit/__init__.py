"""rlhf_kit: the InstructGPT recipe (SFT -> reward model -> PPO) on the Hugging Face stack."""

import logging

__version__ = "0.1.0"

# bitsandbytes >= 0.50 warns at import, on every CPU with AVX-512 BF16, that it could not fetch an optional kernel
# from the Hub (which these machines never reach); its own fallback runs. Keep it out of every command's output.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
