"""Stage "rloo" -- RLOO from the SFT policy against the reward stage's model, KL to SFT, on PPO's prompts with PPO's
response length: a method with no value model to compare with PPO. Wraps TRL's ``RLOOTrainer`` (rlhf_kit/algorithms/
online.py: the reward model scores as PPO's does); LoRA; saves the merged model and the adapter, a policy the eval
stage takes like PPO's.

    accelerate launch recipes/rloo.py --config recipes/configs/demo/rloo.yaml
"""

from rlhf_kit.integrations.trl import ModelConfig, RLOOConfig
from rlhf_kit.run.configs import OnlineArguments, run_recipe, stage_parser


def main(script_args: OnlineArguments, training_args: RLOOConfig, model_args: ModelConfig):
    from rlhf_kit.algorithms.online import train_online
    from rlhf_kit.integrations.training import setup_run
    from rlhf_kit.run.stage import StageRun

    setup_run(training_args)
    run = StageRun("rloo", training_args.output_dir, script_args.force, training_args)
    if not run.skipped:
        train_online("rloo", run, script_args, training_args, model_args)


def make_parser():
    """The stage's config parser (TRL's TrlParser over the dataclasses of its entry in rlhf_kit.core.stages); the
    same as `rlhf-kit rloo`."""
    return stage_parser("rloo")


if __name__ == "__main__":
    run_recipe(main, make_parser)
