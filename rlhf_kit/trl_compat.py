"""The one place that imports TRL pieces that move between releases.

TRL 1.12 keeps ``PPOTrainer`` only under ``trl.experimental.ppo`` and TRL 1.13 removed it, hence the pin
``trl>=1.12,<1.13`` in pyproject.toml. When TRL moves a helper again, this file is the only one to change.
"""

import os

# We pin the TRL release and know PPOTrainer is experimental there; its import-time warning adds nothing.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl import (  # noqa: E402,F401  (re-exported)
    ModelConfig,
    RewardConfig,
    RewardTrainer,
    SFTConfig,
    SFTTrainer,
    TrlParser,
    get_peft_config,
    get_quantization_config,
)
from trl.chat_template_utils import get_training_chat_template, has_generation_markers  # noqa: E402,F401
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: E402,F401  (removed in TRL 1.13)


def ppo_needs_explicit_reference(uses_peft: bool, num_processes: int) -> bool:
    """Whether PPOTrainer must be given the reference policy rather than derive it by disabling the adapter.

    TRL 1.12's adapter-disabled reference (``null_ref_context``) reads ``.policy`` off ``self.model``, which is the
    DistributedDataParallel wrapper when there is more than one process, and fails. An explicit frozen copy of the
    SFT model gives the same reference values at the cost of one more model in memory.
    """
    return not uses_peft or num_processes > 1
