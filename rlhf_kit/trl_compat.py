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


# PPO internals rlhf_kit's own loop (rlhf_kit/ppo_loop.py) builds on. TRL 1.12 keeps them as module-level helpers of
# its PPO trainer; tests/test_trl_pins.py pins each name and signature, so a TRL change fails there first.
from trl.experimental.ppo.ppo_trainer import (  # noqa: E402,F401  (re-exported)
    INVALID_LOGPROB,
    PolicyAndValueWrapper,
    batch_generation,
    forward,
    masked_mean,
    masked_whiten,
    truncate_response,
)
from trl.experimental.utils import first_true_indices, get_reward  # noqa: E402,F401
from trl.models.utils import unwrap_model_for_generation  # noqa: E402,F401
from trl.trainer.utils import selective_log_softmax  # noqa: E402,F401


def policy_of(wrapped_model, accelerator=None):
    """The policy inside TRL's private ``PolicyAndValueWrapper`` (unwrapped from DDP first when given an
    accelerator)."""
    model = accelerator.unwrap_model(wrapped_model) if accelerator is not None else wrapped_model
    return model.policy


def value_model_of(wrapped_model, accelerator=None):
    """The value model inside TRL's private ``PolicyAndValueWrapper``."""
    model = accelerator.unwrap_model(wrapped_model) if accelerator is not None else wrapped_model
    return model.value_model


def reference_context(trainer):
    """TRL's ``null_ref_context``: the adapter-disabled policy serves as the reference (LoRA without ref_model)."""
    return trainer.null_ref_context()


def progress_callback_classes() -> tuple:
    """The Trainer callbacks that draw a progress bar (rlhf_kit's PPO loop draws its own, in episodes)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    return (ProgressCallback, PrinterCallback)


def dataloader_generator(dataloader):
    """The torch.Generator that accelerate's prepared dataloader shuffles with (present with several processes,
    where accelerate syncs it across ranks; None with one process, where the global torch RNG shuffles)."""
    return getattr(dataloader, "synchronized_generator", None)


def gguf_supported_architectures() -> set[str]:
    """The GGUF ``general.architecture`` values transformers can load (a private list of its GGUF loader; pinned by
    tests/test_real_model.py)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}  # metadata sections, not architectures
