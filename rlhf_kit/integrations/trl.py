"""The one place that imports TRL pieces that move between releases.

rlhf_kit wraps TRL's maintained trainers (SFT, reward, DPO, RLOO, GRPO) and its parser and model-config helpers;
PPO is rlhf_kit's own (rlhf_kit/ppo/: TRL removed its PPOTrainer in 1.13). When TRL moves a helper, this file is the
only one to change; tests/test_trl_pins.py pins what is used here by behaviour.
"""

from contextlib import contextmanager

from trl import (  # noqa: F401  (re-exported)
    DPOConfig,
    DPOTrainer,
    GRPOConfig,
    GRPOTrainer,
    ModelConfig,
    RewardConfig,
    RewardTrainer,
    RLOOConfig,
    RLOOTrainer,
    SFTConfig,
    SFTTrainer,
    TrlParser,
    get_peft_config,
    get_quantization_config,
)
from trl.chat_template_utils import get_training_chat_template, has_generation_markers  # noqa: F401


@contextmanager
def zero3_init_disabled():
    """Load models whole on every process even under ZeRO-3, whose ``zero.Init`` (switched on by transformers while
    a DeepSpeed ZeRO-3 config is registered, a private weak reference of its DeepSpeed integration) would partition
    them as they load: for frozen models (PPO's reward model and reference) that run outside any DeepSpeed engine.
    Pinned by tests/test_ppo_sharding.py's ZeRO-3 run."""
    from transformers.integrations import deepspeed as ds

    config = ds._hf_deepspeed_config_weak_ref() if ds._hf_deepspeed_config_weak_ref is not None else None
    if config is None:
        yield
        return
    ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        ds.set_hf_deepspeed_config(config)


def gguf_supported_architectures() -> set[str]:
    """The GGUF ``general.architecture`` values transformers can load (a private list of its GGUF loader; pinned by
    tests/test_real_model.py)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}  # metadata sections, not architectures
