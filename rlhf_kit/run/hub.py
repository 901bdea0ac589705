"""Export a finished stage (merged model by default, or the LoRA adapter alone) with a model card, and upload it to
the Hub with ``huggingface_hub`` using the token from the environment. A dry run writes the exact folder that would
be uploaded and uploads nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from rlhf_kit.core.errors import UserError
from rlhf_kit.core.runs import MARKER, is_complete, is_hub_id, looks_like_hub_id, read_config, read_marker

MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
HYPERPARAMETERS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                   "gradient_accumulation_steps", "global_batch_size", "lora_r", "lora_alpha", "lora_target_modules",
                   "load_in_4bit", "max_length", "ranking_loss", "kl_coef", "total_episodes", "num_ppo_epochs",
                   "response_length", "temperature", "ptx_coef", "kl_target", "seed")


def validate_hub_id(hub_id: str | None) -> str:
    """``owner/name`` as the Hub accepts it; anything else is a one-line error."""
    if not hub_id or not is_hub_id(hub_id, owner=True):
        raise UserError(f"'{hub_id}' is not a valid Hub id; use owner/name (letters, digits, '-', '_', '.')")
    return hub_id


def hub_token() -> str | None:
    """The token from HF_TOKEN or the one saved by `hf auth login`."""
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token()


def require_token() -> str:
    """A Hub token, or a one-line error saying how to log in (before anything is uploaded)."""
    token = hub_token()
    if not token:
        raise UserError("no Hub token: run `hf auth login` or set HF_TOKEN (a write token); nothing was uploaded")
    return token


def build_model_card(stage_dir: Path, hub_id: str, adapter_only: bool):
    """The model card (``huggingface_hub.ModelCard``, saved as README.md) with Hub metadata (``ModelCardData``):
    base model, stage, data, key hyperparameters, eval summary, tags."""
    from huggingface_hub import ModelCard, ModelCardData

    config = read_config(str(stage_dir))
    marker = read_marker(str(stage_dir))
    stage = config["stage"]
    base = config.get("model_name_or_path") or "embedded tiny default (rlhf_kit base stage)"
    datasets = [config[k] for k in ("dataset_path", "eval_dataset_path") if config.get(k)]
    tags = ["trl", "rlhf", stage, "rlhf_kit"] + (["lora"] if config.get("use_peft") else [])
    tags += ["ppo"] if stage == "ppo" and "ppo" not in tags else []
    tags += ["reward-model"] if stage == "reward" else []
    meta = ModelCardData(library_name="peft" if adapter_only else "transformers", tags=tags,
                         pipeline_tag="text-classification" if stage == "reward" else "text-generation",
                         # the Hub's base_model field takes repo ids, not local paths
                         base_model=base if looks_like_hub_id(str(base)) else None)
    lines = ["---", meta.to_yaml(), "---", "", f"# {hub_id.split('/')[-1]}", "",
             f"The **{stage}** stage of an InstructGPT-style RLHF run (SFT -> reward model -> PPO) made with "
             "rlhf_kit on TRL.", "",
             f"- Base model: `{base}`",
             "- Contents: " + ("the LoRA adapter alone (load it onto the base model)" if adapter_only
                               else "the merged model"),
             f"- Data: {', '.join(f'`{d}`' for d in datasets) if datasets else 'see the stage config'}", "",
             "## Hyperparameters", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {config[k]} |" for k in HYPERPARAMETERS if config.get(k) not in (None, "", -1)]
    lines += ["", "## Training result", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in marker.items()]
    summary = stage_dir.parent / "summary.json"
    if summary.is_file():
        from rlhf_kit.eval.report import headline

        lines += ["", "## Evaluation of the run", "", headline(json.loads(summary.read_text()))]
    load = (f"from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained('{hub_id}')"
            if adapter_only else
            f"from transformers import AutoModelFor{'SequenceClassification' if stage == 'reward' else 'CausalLM'}"
            f"\nmodel = AutoModelFor{'SequenceClassification' if stage == 'reward' else 'CausalLM'}"
            f".from_pretrained('{hub_id}')")
    lines += ["", "## Use", "", "```python", load, "```", ""]
    return ModelCard("\n".join(lines))


def export_stage(stage_dir: str, export_dir: str, hub_id: str, adapter_only: bool = False) -> Path:
    """Write the folder that would be uploaded: model (or adapter) files, tokenizer, model card."""
    src, out = Path(stage_dir), Path(export_dir)
    if not src.exists():
        raise UserError(f"stage output {stage_dir} not found; run that stage first")
    if not is_complete(src):
        raise UserError(f"stage {stage_dir} is unfinished (no {MARKER}); finish it before exporting")
    adapter = src / "adapter"
    if adapter_only and not (adapter / "adapter_config.json").is_file():
        raise UserError(f"stage {stage_dir} has no LoRA adapter (trained without use_peft); export the merged model")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = MODEL_FILES + (ADAPTER_FILES if adapter_only else ())
    for name in names:
        for folder in ((adapter, src) if adapter_only else (src,)):
            if (folder / name).is_file():
                shutil.copy2(folder / name, tmp / name)
                break
    if not adapter_only:
        for weights in src.glob("model*.safetensors*"):
            shutil.copy2(weights, tmp / weights.name)
    if adapter_only:
        (tmp / "config.json").unlink(missing_ok=True)  # the base model's config belongs to the base repo
    build_model_card(src, hub_id, adapter_only).save(tmp / "README.md")
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)  # a half-written export never takes the place of a finished one
    return out


def push_stage(stage_dir: str, hub_id: str, adapter_only: bool = False, dry_run: bool = False,
               export_dir: str | None = None, private: bool = False) -> Path:
    """Export ``stage_dir`` and upload it to ``hub_id`` (nothing uploaded on a dry run or without a token)."""
    validate_hub_id(hub_id)
    token = None if dry_run else require_token()
    out = export_stage(stage_dir, export_dir or str(Path(stage_dir) / "export"), hub_id, adapter_only)
    if dry_run:
        print(f"dry run: {out} holds what would be uploaded to {hub_id}; nothing was uploaded")
        return out
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(hub_id, exist_ok=True, private=private)
        commit = api.upload_folder(folder_path=str(out), repo_id=hub_id,
                                   commit_message=f"rlhf_kit: upload {Path(stage_dir).name} stage")
    except HfHubHTTPError as err:
        raise UserError(f"upload to {hub_id} failed ({str(err).splitlines()[0]}); check the token's write access")
    except OSError as err:  # no network
        raise UserError(f"upload to {hub_id} failed: the Hub is unreachable ({err}); retry where it is reachable")
    print(f"uploaded {out} to {hub_id} ({getattr(commit, 'commit_url', commit)})")
    return out


def check_push_request(training_args) -> str | None:
    """Before training: validate TRL's ``push_to_hub`` / ``hub_model_id`` and the token, so a long run does not end
    in a failed upload. :class:`rlhf_kit.run.stage.StageRun` then pushes the finished stage with :func:`push_stage`
    (merged model + model card) instead of the Trainer's checkpoint pushes, which hold neither."""
    if not training_args.push_to_hub:
        return None
    hub_id = validate_hub_id(training_args.hub_model_id)
    require_token()
    return hub_id
