"""Load and build tokenizers, policies, reward and value models; LoRA / QLoRA; adapter merging.

Every load goes through ``from_pretrained`` with a local path or a Hub id, so the embedded tiny default and real
checkpoints take the same road. Each training stage saves a *merged* model (plus its LoRA adapter in ``adapter/``),
so every later stage starts from a plain checkpoint: PPO adds a fresh adapter to the SFT model and reads ``.score``
off the reward model directly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rlhf_kit.core.errors import UserError

logger = logging.getLogger(__name__)

GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")
IMPORT_COMMAND = "rlhf-kit import --model_name_or_path <file.gguf> --output_dir runs/<name>/import"


def is_gguf_checkpoint(path: str) -> bool:
    """Whether ``path`` is a ``.gguf`` file or a folder whose config still declares GGUF quantization (a model
    loaded from GGUF and saved without the import stage)."""
    import json

    p = Path(path)
    if p.is_file():
        return p.suffix == ".gguf"
    config = p / "config.json"
    if not config.is_file():
        return False
    try:
        quant = json.loads(config.read_text()).get("quantization_config") or {}
    except (OSError, ValueError):
        return False
    return str(quant.get("quant_method", "")).lower() == "gguf"


def require_plain_checkpoint(path: str, what: str) -> None:
    """Refuse a GGUF file or GGUF-declaring checkpoint where a stage needs a trainable one (the import stage first)."""
    if is_gguf_checkpoint(path):
        kind = "a GGUF file" if Path(path).is_file() else "a checkpoint whose config declares GGUF quantization"
        raise UserError(f"{what} at {path} is {kind}, which trainers refuse; import it first with "
                        f"`{IMPORT_COMMAND}` and point to that folder")


def _load(loader, path: str, what: str, **kwargs):
    """``loader(path)`` with one-line errors for a missing path, an unreachable Hub or a GGUF checkpoint."""
    from rlhf_kit.core.runs import looks_like_hub_id

    require_plain_checkpoint(path, what)
    try:
        return loader(path, **kwargs)
    except (OSError, ValueError) as err:
        if Path(path).exists():
            raise UserError(f"{what} at {path} could not be loaded ({str(err).splitlines()[0]}); "
                            "point to a folder written by save_pretrained")
        if looks_like_hub_id(path):
            raise UserError(f"{what} '{path}' is neither a local folder nor reachable on the Hub (offline?); "
                            "download it elsewhere and pass its local path")
        raise UserError(f"{what} {path} not found; check the path")


def load_tokenizer(path: str, padding_side: str = "right"):
    """Tokenizer with a chat template and a pad token (unk, else eos, when it has none)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    loader = AutoTokenizer.from_pretrained
    declared = Path(path) / "tokenizer_config.json"
    if declared.is_file() and json.loads(declared.read_text()).get("tokenizer_class") in GENERIC_TOKENIZERS:
        # transformers 5 swaps a generic tokenizer.json for the class registered for the model type (e.g. Qwen2's
        # BPE), which garbles a word-level vocabulary; the checkpoint's own declaration wins.
        loader = PreTrainedTokenizerFast.from_pretrained
    tokenizer = _load(loader, path, "tokenizer")
    if not tokenizer.chat_template:
        raise UserError(f"tokenizer at {path} has no chat template; use an instruct/chat checkpoint or set "
                        "tokenizer.chat_template and save it")
    if tokenizer.pad_token is None:
        # Padding is masked out everywhere, so reusing unk (never a target) is safe; eos is the fallback TRL uses.
        fallback = tokenizer.unk_token or tokenizer.eos_token
        if fallback is None:
            raise UserError(f"tokenizer at {path} has no pad, unk or eos token; add a pad token and save it")
        logger.warning("tokenizer at %s has no pad token; using %r", path, fallback)
        tokenizer.pad_token = fallback
    tokenizer.padding_side = padding_side
    return tokenizer


def quantization_kwargs(model_args) -> dict:
    """``from_pretrained`` kwargs for 4-bit QLoRA (NF4, bitsandbytes) and the dtype, from TRL's ModelConfig."""
    from rlhf_kit.integrations.trl import get_quantization_config

    kwargs = {}
    if model_args is None:
        return kwargs
    if model_args.load_in_4bit and model_args.dtype in (None, "auto", "float32"):
        # QLoRA (Dettmers et al. 2023) computes in bf16, and TRL casts the trainable adapter and head of a 4-bit
        # model to bf16, so the unquantized rest (norms, embeddings) must be bf16 too.
        logger.info("load_in_4bit: computing in bfloat16 (QLoRA); set dtype: float16 for GPUs without bf16")
        model_args.dtype = "bfloat16"
    if model_args.dtype not in (None, "auto"):
        import torch

        kwargs["dtype"] = getattr(torch, model_args.dtype)
    quant = get_quantization_config(model_args)
    if quant is not None:
        load_bitsandbytes()
        kwargs["quantization_config"] = quant
        import torch

        if torch.cuda.is_available():  # each process holds its own 4-bit copy (data parallel)
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().local_process_index}
    return kwargs


def load_bitsandbytes() -> None:
    """Import bitsandbytes for a 4-bit load, undoing ``rlhf_kit.defer_bitsandbytes``: the ``sys.modules`` entry that
    refused it goes, and the availability checks that cached "absent" meanwhile (peft's, transformers') are cleared
    so that 4-bit layers get their LoRA layers and quantizer."""
    import sys

    if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
        del sys.modules["bitsandbytes"]
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise UserError(f"4-bit loading needs bitsandbytes ({err}); pip install bitsandbytes, or drop load_in_4bit")
    from peft import import_utils as peft_imports
    from transformers.utils import import_utils as transformers_imports

    for check in (peft_imports.is_bnb_available, peft_imports.is_bnb_4bit_available,
                  transformers_imports.is_bitsandbytes_available):
        check.cache_clear()


def require_4bit_support(path: str, model_args) -> None:
    """Refuse 4-bit where bitsandbytes cannot run it: its CPU kernels quantize each layer's inputs in blocks of 64,
    so every layer width must be a multiple of 64 (real checkpoints are; tiny test models may not be)."""
    import torch
    from transformers import AutoConfig

    if model_args is None or not model_args.load_in_4bit or torch.cuda.is_available():
        return
    config = _load(AutoConfig.from_pretrained, path, "model config")
    widths = {k: getattr(config, k, None) for k in ("hidden_size", "intermediate_size", "n_embd")}
    odd = {k: v for k, v in widths.items() if isinstance(v, int) and v % 64}
    if odd:
        detail = ", ".join(f"{k}={v}" for k, v in odd.items())
        raise UserError(f"load_in_4bit: bitsandbytes' CPU 4-bit kernels need layer widths that are multiples of 64, "
                        f"but {path} has {detail}; drop load_in_4bit or use a GPU")


def dtype_kwargs(model_args=None, dtype: str | None = None) -> dict:
    """``from_pretrained`` kwargs from TRL's ModelConfig (quantization, dtype), or from ``dtype`` alone (a frozen or
    sampling-only model, e.g. ``bfloat16`` on a CPU with AMX)."""
    kwargs = quantization_kwargs(model_args)
    if dtype not in (None, "auto") and "dtype" not in kwargs:
        import torch

        kwargs["dtype"] = getattr(torch, dtype)
    return kwargs


def load_causal_lm(path: str, model_args=None, what: str = "policy", dtype: str | None = None):
    """A causal LM (policy or reference) from a folder or Hub id; ``dtype`` when no ModelConfig gives one."""
    from transformers import AutoModelForCausalLM

    require_4bit_support(path, model_args)
    return _load(AutoModelForCausalLM.from_pretrained, path, what, **dtype_kwargs(model_args, dtype))


def load_reward_model(path: str, model_args=None, what: str = "reward model", require_head: bool = False,
                      dtype: str | None = None):
    """A sequence-classification model with one output: the scalar reward r(x, y). ``require_head``: refuse a
    checkpoint without a trained head (a reward model to score with, not one to train from an SFT model)."""
    from transformers import AutoModelForSequenceClassification

    require_4bit_support(path, model_args)
    import transformers

    verbosity = transformers.utils.logging.get_verbosity()
    if require_head:  # a missing head is reported below in one line, not in transformers' load report
        transformers.utils.logging.set_verbosity_error()
    try:
        model, info = _load(AutoModelForSequenceClassification.from_pretrained, path, what, num_labels=1,
                            output_loading_info=True, **dtype_kwargs(model_args, dtype))
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
    head = getattr(model, "score", None)
    untrained = [k for k in info.get("missing_keys", ()) if k.split(".")[0] == "score"]
    if require_head and (head is None or untrained):
        # from_pretrained would initialise a fresh, random head (e.g. on an SFT or base checkpoint) and PPO would
        # "train" against noise without a word.
        raise UserError(f"{what} at {path} has no trained reward head ({', '.join(untrained) or 'no score layer'} "
                        "missing); point to a reward stage's output, e.g. runs/demo/reward")
    return model


def attention_mask_for(config, allowed):
    """A 4D ``[batch, 1, query, key]`` attention mask, given as booleans (True: may attend), in the form the model's
    attention implementation takes one as is: booleans for ``sdpa`` (and a model without a ``config``), an additive
    float mask for ``eager``; other implementations (flash, flex) take no custom 4D mask, and the user is told so."""
    import torch

    implementation = getattr(config, "_attn_implementation", None) or "sdpa"
    if implementation == "sdpa":
        return allowed
    if implementation == "eager":
        return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min).to(allowed.device)
    raise UserError(f"attn_implementation {implementation} takes no custom attention mask, which the K-wise reward "
                    "loss packs each ranking with; set attn_implementation: sdpa (or eager)")


def build_peft_config(model_args, task_type: str):
    """LoRA config from TRL's ModelConfig (``use_peft``, ``lora_r``, ...); None when LoRA is off."""
    from rlhf_kit.integrations.trl import get_peft_config

    model_args.lora_task_type = task_type
    config = get_peft_config(model_args)
    if config is not None and task_type == "SEQ_CLS" and not config.modules_to_save:
        config.modules_to_save = ["score"]  # the reward head is new: train it fully and save it with the adapter
    return config


def lora_value_model(reward_model, peft_config):
    """A value model for PPO from a copy of ``reward_model``: LoRA adapters (``peft_config``'s rank, alpha and
    targets) injected in place, in float32, and the score head trained in full (float32); every other weight frozen
    in the reward model's dtype. In place rather than a PeftModel, so the model keeps its class and attributes (its
    transformer and ``score``), as the whole-model value model has them."""
    import copy

    from peft import LoraConfig, inject_adapter_in_model

    value_model = copy.deepcopy(reward_model)
    config = LoraConfig(r=peft_config.r, lora_alpha=peft_config.lora_alpha, lora_dropout=peft_config.lora_dropout,
                        target_modules=peft_config.target_modules, exclude_modules=["score"], bias="none")
    value_model = inject_adapter_in_model(config, value_model)
    for name, param in value_model.named_parameters():
        param.requires_grad = "lora_" in name or name.startswith("score.")
        if param.requires_grad:  # bf16 weights would round most Adam updates away
            param.data = param.data.float()
    return value_model


def save_stage_model(model, tokenizer, output_dir: str, base_path: str, model_args=None, state_dict=None) -> None:
    """Save a stage's model as a merged checkpoint (LoRA adapter also kept under ``adapter/``).

    ``state_dict``: the full weights gathered from sharded (FSDP) processes, whose own parameters are slices.
    """
    from peft import PeftModel

    out = Path(output_dir)
    if isinstance(model, PeftModel):
        model.save_pretrained(out / "adapter", state_dict=state_dict)
        quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model.base_model, "is_loaded_in_4bit", False)
        if quantized or state_dict is not None:
            # A 4-bit base cannot absorb the adapter (QLoRA paper's deployment path), and a sharded one holds this
            # process's slice only: reload the base in full precision and merge the saved adapter there.
            model = PeftModel.from_pretrained(_reload(model.get_base_model(), base_path), out / "adapter")
        model = model.merge_and_unload()
    elif state_dict is not None:
        full = _reload(model, base_path)
        full.load_state_dict(state_dict)
        model = full
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _reload(model, base_path: str):
    """A fresh full-precision copy of ``model``'s architecture from ``base_path``."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    if is_deepspeed_zero3_enabled():  # training is over: load whole on this process, not partitioned over all
        unset_hf_deepspeed_config()
    cls = type(model)
    return cls.from_pretrained(base_path, **({"num_labels": 1} if "Sequence" in cls.__name__ else {}))


def require_same_tokenizer(a, b, a_name: str, b_name: str) -> None:
    """PPO scores policy tokens with the reward model, so both must share one vocabulary."""
    if a.get_vocab() != b.get_vocab() or a.pad_token_id != b.pad_token_id or a.eos_token_id != b.eos_token_id:
        raise UserError(f"the {a_name} and {b_name} tokenizers differ; train the reward model from the same SFT "
                        "checkpoint as the policy")
