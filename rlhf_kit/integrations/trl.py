"""The one place that imports TRL pieces that move between releases.

rlhf_kit wraps TRL's maintained trainers (SFT, reward) and its parser and model-config helpers; PPO is rlhf_kit's
own (rlhf_kit/ppo/: TRL removed its PPOTrainer in 1.13). When TRL moves a helper, this file is the only one to
change; tests/test_trl_pins.py pins what is used here by behaviour.
"""

import os
from contextlib import contextmanager

from trl import (  # noqa: F401  (re-exported)
    ModelConfig,
    RewardConfig,
    RewardTrainer,
    SFTConfig,
    SFTTrainer,
    TrlParser,
    get_peft_config,
    get_quantization_config,
)
from trl.chat_template_utils import get_training_chat_template, has_generation_markers  # noqa: F401


def enable_fsdp_on_cpu() -> None:
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


def enable_deepspeed_on_cpu(parser) -> None:
    """Let a DeepSpeed accelerate config run its ZeRO stage on CPU processes (gloo).

    accelerate 1.15 treats a DeepSpeed process without a GPU as "no backend, no distribution" (one process of one),
    so DeepSpeed's batch check fails against the real world size; and with ``use_cpu`` it drops DeepSpeed for DDP.
    TrainingArguments' ``ddp_backend: gloo`` (the default set here; a config may still choose) gives accelerate a
    backend, and DeepSpeed's CPU accelerator then trains the real group.
    """
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ["ACCELERATE_USE_CPU"] = "false"  # accelerate keeps DeepSpeed only for a process not marked CPU
    parser.set_defaults(ddp_backend="gloo")


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
