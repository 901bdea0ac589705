"""The stages, in one registry: what each is called, what it reads and writes, how it is launched and parsed.

Everything that lists stages reads them here: the ``rlhf-kit`` subcommands and ``rlhf-kit stages`` (``make help``),
the launcher (which stages run under accelerate), rounds (which stages a round repeats), the "run that stage first"
hints, the evaluation's training-data check, and each recipe's parser. ``tests/test_layout.py`` checks that every
stage has its recipe and its Makefile target.

Config dataclasses are named as ``module:Class`` strings and imported only when a recipe parses (as the worlds'
labelers and judges are), so listing the stages imports neither TRL nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One stage: ``recipes/<name>.py``, ``make <name>``, ``rlhf-kit <name>``, output ``runs/<run>/<name>/``."""

    name: str
    does: str  # one line, for `rlhf-kit stages` and `make help`
    reads: tuple[str, ...]  # the stages whose outputs it loads (on either track)
    writes: str  # what its output folder holds
    configs: tuple[str, ...]  # the dataclasses its parser fills, as module:Class
    launched: bool = False  # training: under accelerate, one process per device
    trains_on: str | None = None  # the kind of rows it trains on (a data card's stage), for the eval's leak check
    track: str = "every"  # "every" track, or "real": the real-model track's own (recipes/configs/smollm2-135m-ifeval)

    def dataclasses(self) -> tuple:
        """The config dataclasses, imported now (the recipe is about to parse)."""
        import importlib

        return tuple(getattr(importlib.import_module(module), name)
                     for module, _, name in (target.partition(":") for target in self.configs))


_RUN = "rlhf_kit.run.configs"
_TRL = "rlhf_kit.integrations.trl"

STAGES = {s.name: s for s in (
    Stage("import", "a GGUF file as a plain transformers checkpoint", (), "checkpoint, tokenizer, logit check",
          (f"{_RUN}:ImportArguments",), track="real"),
    Stage("world", "the IFEval world's prompt files: training, held-out tasks, held-out instruction types", (),
          "prompts JSONL files", (f"{_RUN}:WorldArguments",), track="real"),
    Stage("demos", "SFT demonstrations by rejection sampling from the base model", ("import", "world"),
          "samples and kept demonstrations (JSONL)", (f"{_RUN}:DemosArguments",), track="real"),
    Stage("base", "the demo world's tiny base model, pretrained from scratch", (), "checkpoint",
          (f"{_RUN}:BaseArguments", f"{_TRL}:SFTConfig"), launched=True),
    Stage("sft", "supervised fine-tuning on demonstrations (TRL's SFTTrainer, LoRA)", ("base or import", "demos"),
          "policy (LoRA adapter or model)", (f"{_RUN}:DataArguments", f"{_TRL}:SFTConfig", f"{_TRL}:ModelConfig"),
          launched=True, trains_on="sft"),
    Stage("compare", "K samples per prompt from the policy, ranked by a labeler", ("sft",),
          "rankings JSONL (train and held-out)", (f"{_RUN}:CompareArguments",)),
    Stage("reward", "the reward model on K-wise rankings (InstructGPT's loss, TRL's RewardTrainer)",
          ("sft", "compare"), "reward model", (f"{_RUN}:RewardArguments", f"{_TRL}:RewardConfig",
                                               f"{_TRL}:ModelConfig"), launched=True, trains_on="comparisons"),
    Stage("ppo", "PPO against the reward model with a KL penalty to SFT (rlhf_kit's trainer)", ("sft", "reward"),
          "policy, checkpoints, monitor", (f"{_RUN}:PPOArguments", "rlhf_kit.ppo.config:PPOConfig",
                                           f"{_TRL}:ModelConfig"), launched=True, trains_on="prompts"),
    Stage("dpo", "DPO from SFT on the compare stage's rankings, reference = SFT (TRL's DPOTrainer, LoRA)",
          ("sft", "compare"), "policy (LoRA adapter or model)", (f"{_RUN}:DPOArguments", f"{_TRL}:DPOConfig",
                                                                 f"{_TRL}:ModelConfig"),
          launched=True, trains_on="comparisons"),
    Stage("rloo", "RLOO from SFT against the reward model, KL to SFT (TRL's RLOOTrainer, LoRA; no value model)",
          ("sft", "reward"), "policy (LoRA adapter or model)", (f"{_RUN}:OnlineArguments", f"{_TRL}:RLOOConfig",
                                                                f"{_TRL}:ModelConfig"),
          launched=True, trains_on="prompts"),
    Stage("grpo", "GRPO from SFT against the reward model, KL to SFT (TRL's GRPOTrainer, LoRA; no value model)",
          ("sft", "reward"), "policy (LoRA adapter or model)", (f"{_RUN}:OnlineArguments", f"{_TRL}:GRPOConfig",
                                                                f"{_TRL}:ModelConfig"),
          launched=True, trains_on="prompts"),
    Stage("eval", "every policy on held-out prompts, scored by a judge the reward model never saw",
          ("sft", "reward", "ppo"), "summary.json, report.md, plots", (f"{_RUN}:EvalArguments",)),
)}

DEMO = ("base", "sft", "compare", "reward", "ppo", "eval")  # `make demo`, `rlhf-kit demo`
REAL = ("import", "world", "demos", "sft", "compare", "reward", "ppo", "eval")  # `make real`
ROUND = ("compare", "reward", "ppo", "eval")  # what each RLHF round repeats (rlhf_kit.run.rounds)
TRAINS_ON = {name: s.trains_on for name, s in STAGES.items() if s.trains_on}


def hint(stage: str) -> str:
    """How to make a stage's missing output, or "check the path" for a folder that is no stage's."""
    if stage not in STAGES:
        return "check the path"
    if STAGES[stage].track == "real":
        return f"run the {stage} stage first (`make real` runs every stage of the real-model track)"
    return f"run `make {stage}` first"


def table() -> str:
    """Every stage, one line each, in pipeline order: what ``rlhf-kit stages`` and ``make help`` print."""
    width = max(map(len, STAGES))
    lines = []
    for name, s in STAGES.items():  # listed in pipeline order
        reads = ", ".join(s.reads) or "-"
        how = "accelerate" if s.launched else "python"
        lines.append(f"{name:<{width}}  {s.does}\n{'':<{width}}  reads: {reads}; writes: {s.writes}; runs with {how}"
                     + ("; real-model track" if s.track == "real" else ""))
    return "\n".join(lines)
