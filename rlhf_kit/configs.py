"""Script-argument dataclasses (only the fields TRL lacks) and the parser every recipe uses.

A run is ``recipe --config <stage>.yaml [--key value ...]``: the YAML sets defaults, the command line overrides,
and an unknown key is an error (TRL's ``TrlParser``, as in alignment-handbook).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import yaml

from rlhf_kit.errors import UserError


@dataclass
class StageArguments:
    """Fields shared by every stage."""

    force: bool = field(default=False, metadata={"help": "Rerun the stage even if its output is marked complete."})


@dataclass
class TrainArguments(StageArguments):
    """Fields shared by the training stages."""

    global_batch_size: int | None = field(default=None, metadata={
        "help": "Examples per optimizer step over all processes; sets per_device_train_batch_size to "
                "global / (world size x gradient_accumulation_steps), so runs on any process count match."})


@dataclass
class BaseArguments(TrainArguments):
    """Stage 0: build and briefly pretrain the embedded tiny model on the demo world's corpus."""

    data_dir: str = field(default="runs/demo/data", metadata={"help": "Where the demo world's JSONL splits go."})
    world_seed: int = field(default=0, metadata={"help": "Seed of the demo world (prompts, demonstrations)."})
    flaw_rate: float = field(default=0.2, metadata={"help": "Chance of each flaw in a demonstration (0 to 1)."})
    hidden_size: int = field(default=64, metadata={"help": "Width of the tiny Llama."})
    intermediate_size: int = field(default=256, metadata={"help": "MLP width of the tiny Llama."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Layers of the tiny Llama."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads of the tiny Llama."})
    max_position_embeddings: int = field(default=128, metadata={"help": "Longest sequence the tiny model takes."})


@dataclass
class DataArguments(TrainArguments):
    """A training stage's dataset: a local file (.jsonl/.json/.parquet/.csv), a local folder, or a Hub id."""

    dataset_path: str = field(default="", metadata={"help": "Dataset file, folder or Hub id."})
    dataset_cards: str | None = field(default=None, metadata={
        "help": "Data cards instead of dataset_path: 'card[:weight[:max_rows]],...' (see data_cards/README.md)."})
    card_data_dir: str | None = field(default=None, metadata={
        "help": "Local copies of the cards' data as <dir>/<card>/<split>.jsonl (offline use)."})
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    max_rows: int | None = field(default=None, metadata={"help": "Use at most this many rows (after filtering)."})


@dataclass
class SamplingArguments(StageArguments):
    """Sampling from policies: comparison collection and evaluation."""

    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (as in PPO rollouts)."})
    max_new_tokens: int = field(default=24, metadata={"help": "Longest response."})
    batch_size: int = field(default=64, metadata={"help": "Prompts per generation or forward batch."})
    seed: int = field(default=0, metadata={"help": "Sampling (and simulated labeler) seed."})


@dataclass
class CompareArguments(SamplingArguments):
    """InstructGPT's comparison collection: K samples per prompt from the SFT policy, ranked by a labeler."""

    model_name_or_path: str = field(default="runs/demo/sft", metadata={"help": "The SFT policy to sample from."})
    dataset_path: str = field(default="runs/demo/data/prompts.jsonl", metadata={"help": "Prompts to sample for."})
    dataset_split: str = field(default="train", metadata={"help": "Split of the prompts."})
    output_dir: str = field(default="runs/demo/compare", metadata={"help": "Where rankings and pairs are written."})
    num_responses: int = field(default=4, metadata={"help": "K responses per prompt (InstructGPT: 4 to 9)."})
    labeler_noise: float = field(default=0.1, metadata={"help": "Std of the simulated labeler's score noise."})
    max_prompt_length: int = field(default=64, metadata={"help": "Prompts longer than this are dropped."})
    heldout_fraction: float = field(default=0.1, metadata={"help": "Share of prompts kept for RM evaluation."})

    def __post_init__(self):
        if not 2 <= self.num_responses <= 9:
            raise UserError(f"num_responses={self.num_responses} is out of range; InstructGPT's K is 2 to 9")


@dataclass
class RewardArguments(DataArguments):
    """Reward-model data: training comparisons and (optionally) held-out ones for accuracy."""

    eval_dataset_path: str | None = field(default=None, metadata={"help": "Held-out comparisons (optional)."})
    ranking_loss: str = field(default="kwise", metadata={
        "help": "kwise: InstructGPT's loss over all C(K,2) pairs of a ranking in one batch element; pairwise: one "
                "element per (chosen, rejected) pair.", "choices": ["kwise", "pairwise"]})
    k_max: int = field(default=9, metadata={"help": "Most responses per ranking (InstructGPT: K = 4..9)."})
    use_margins: bool = field(default=False, metadata={"help": "kwise: margin from graded `scores` of a ranking."})


@dataclass
class PPOArguments(DataArguments):
    """PPO prompts and their length limit."""

    max_prompt_length: int = field(default=64, metadata={"help": "Prompts longer than this are dropped."})
    eval_rows: int = field(default=16, metadata={"help": "Prompts kept for TRL's sample generations."})
    ptx_coef: float = field(default=0.0, metadata={
        "help": "PPO-ptx (InstructGPT Eq. 2): gamma, the weight of the language-model loss on ptx_dataset added to "
                "each PPO micro-batch; 0 is plain PPO."})
    ptx_dataset: str | None = field(default=None, metadata={
        "help": "Pretraining text for PPO-ptx: a file of {\"text\": ...} or {\"messages\": [...]} rows, or a finished "
                "stage folder (its training data), e.g. runs/demo/data/pretrain.jsonl or runs/demo/sft."})
    ptx_max_length: int = field(default=128, metadata={"help": "PPO-ptx examples are cut to this many tokens."})
    kl_target: float | None = field(default=None, metadata={
        "help": "Adaptive KL (Ziegler et al. 2019): the KL(pi_RL || pi_SFT) per response to steer towards, in nats; "
                "kl_coef is then the initial beta. Unset: beta stays kl_coef."})
    kl_horizon: int = field(default=10000, metadata={
        "help": "Adaptive KL: episodes over which beta corrects the KL error (Ziegler et al.: 10000)."})

    def __post_init__(self):
        if self.ptx_coef < 0:
            raise UserError(f"ptx_coef={self.ptx_coef} is negative; use 0 (plain PPO) or a positive gamma")
        if self.ptx_coef > 0 and not self.ptx_dataset:
            raise UserError(f"ptx_coef={self.ptx_coef} needs a ptx_dataset (pretraining text); set ptx_dataset, e.g. "
                            "runs/demo/data/pretrain.jsonl, or ptx_coef: 0")
        if self.ptx_dataset and not os.path.exists(self.ptx_dataset):
            raise UserError(f"ptx_dataset {self.ptx_dataset} not found; pass an existing data file or stage folder")
        if self.ptx_max_length < 2:
            raise UserError(f"ptx_max_length={self.ptx_max_length} is too short; use at least 2 tokens")
        if self.kl_target is not None and self.kl_target <= 0:
            raise UserError(f"kl_target={self.kl_target} must be positive (nats per response), or unset for a fixed "
                            "kl_coef")
        if self.kl_horizon <= 0:
            raise UserError(f"kl_horizon={self.kl_horizon} must be a positive number of episodes")


@dataclass
class EvalArguments(SamplingArguments):
    """Evaluation of a run's base, SFT and PPO policies against the gold labeler."""

    run_dir: str = field(default="runs/demo", metadata={"help": "The run: its base/sft/compare/reward/ppo folders."})
    eval_dataset_path: str = field(default="runs/demo/data/eval.jsonl", metadata={"help": "Held-out prompts."})
    num_report_samples: int = field(default=10, metadata={"help": "SFT-vs-PPO sample rows in the report."})


def parse_stage_args(dataclass_types: tuple, argv: list[str] | None = None) -> tuple:
    """Parse ``--config file.yaml`` plus CLI overrides into the given dataclasses; user mistakes become UserError."""
    import torch

    from rlhf_kit.trl_compat import TrlParser

    if not torch.cuda.is_available():
        # accelerate's multi-process launcher does not pass `use_cpu` to the ranks, and without it they see no GPU,
        # pick DistributedType.NO and each trains alone; with it they form a gloo data-parallel group.
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise UserError("--config needs a path: --config recipes/configs/demo/<stage>.yaml")
        path = argv[i + 1]
        if not os.path.isfile(path):
            raise UserError(f"config file {path} not found; pass an existing YAML, e.g. recipes/configs/demo/sft.yaml")
        try:
            with open(path) as f:
                config = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise UserError(f"config file {path} is not valid YAML ({str(err).splitlines()[0]}); fix its syntax")
        if not isinstance(config, dict):
            raise UserError(f"config file {path} must hold a YAML mapping of key: value lines")
        known = {f for dc in dataclass_types for f in dc.__dataclass_fields__} | {"env"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise UserError(f"unknown key(s) {', '.join(unknown)} in {path}; check the spelling (see --help)")
    parser = TrlParser(dataclass_types, allow_abbrev=False)  # a typo must not match a longer flag
    try:
        return tuple(parser.parse_args_and_config(argv))
    except (ValueError, TypeError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "bf16" in msg or "fp16" in msg:
            msg += " (on a CPU set `bf16: false` in the config or pass --bf16 false)"
        raise UserError(f"invalid configuration: {msg}")
