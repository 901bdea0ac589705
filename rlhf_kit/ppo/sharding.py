"""Whole weights for sampling under sharded training (ZeRO-3, FSDP2).

PPO's rollouts decode token by token from the policy outside the distributed wrapper, where ZeRO-3 and FSDP2 keep
every weight split across processes. For the length of the sampling these contexts make the weights whole on every
process, and split them again afterwards (transient memory: one full copy of the policy+value module per process).
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def whole_weights(model, accelerator):
    """``model`` (as prepared by ``accelerator``) with its parameters whole inside the context."""
    kind = accelerator.distributed_type.value
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if kind == "DEEPSPEED" and plugin is not None and plugin.zero_stage == 3:
        with _zero3_gathered(model):
            yield
    elif kind == "FSDP":
        with _fsdp2_unsharded(accelerator.unwrap_model(model)):
            yield
    else:
        yield


@contextmanager
def _zero3_gathered(engine):
    """DeepSpeed ZeRO-3: every parameter gathered, and the engine's fetch/release hooks lifted while the unwrapped
    module runs (else they would partition the weights again after each layer). As TRL's
    ``unwrap_model_for_generation`` (trl/models/utils.py, ``remove_hooks`` / ``add_hooks``)."""
    import deepspeed

    offload = getattr(engine.optimizer, "parameter_offload", engine.optimizer)
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        for param in engine.module.parameters():
            param.ds_active_sub_modules.clear()
        for hook in offload.forward_hooks + offload.backward_hooks:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield
        finally:
            coordinator = getattr(offload, "param_coordinator", None)
            if coordinator is not None and not coordinator.is_invalid_trace():
                coordinator._invalidate_trace()  # the traced fetch order no longer holds
            offload._register_deepspeed_module(offload.module)


@contextmanager
def _fsdp2_unsharded(module):
    """PyTorch FSDP2 (``fully_shard``): every FSDP module unsharded, and kept unsharded after each forward, so the
    whole policy (embeddings included, which belong to the root) runs on plain tensors; resharded afterwards."""
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in module.modules() if isinstance(m, FSDPModule)]
    for m in sharded:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in sharded:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)
