"""The libraries underneath, wrapped once: TRL (``trl``), the hardware a launch runs on (``hardware``), model
and tokenizer loading with LoRA/QLoRA (``modeling``), GGUF import (``gguf``) and trainer runs with resume
(``training``). Imports only :mod:`rlhf_kit.core`."""
