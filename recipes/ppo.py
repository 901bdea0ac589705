"""Stage 3 -- PPO against the reward model (InstructGPT Sec. 3.5): policy and reference from the SFT model (with
LoRA the reference is the adapter-disabled model), value model initialised from the reward model, per-token KL
penalty R = r(x, y) - beta log pi_RL(y|x) / pi_SFT(y|x). Wraps ``trl.experimental.ppo.PPOTrainer``.

    accelerate launch recipes/ppo.py --config recipes/configs/demo/ppo.yaml
"""

import time

from rlhf_kit.configs import PPOArguments, make_stage_parser, run_recipe
from rlhf_kit.trl_compat import ModelConfig, PPOConfig


def main(script_args: PPOArguments, training_args: PPOConfig, model_args: ModelConfig):
    import copy

    from accelerate import PartialState

    from rlhf_kit import hub, modeling, runs
    from rlhf_kit.cards import load_stage_rows
    from rlhf_kit.data import build_prompt_dataset
    from rlhf_kit.training import apply_global_batch, last_logged, report_rank, save_log_history, setup_run
    from rlhf_kit.trl_compat import PPOTrainer, ppo_needs_explicit_reference

    setup_run(training_args)
    started, out, is_main = time.time(), training_args.output_dir, PartialState().is_main_process
    if runs.skip_if_complete(out, "ppo", script_args.force):
        return
    hub_id = hub.check_push_request(training_args)
    sft, rm = model_args.model_name_or_path, training_args.reward_model_path
    runs.require_stage_output(sft, "SFT policy")
    runs.require_stage_output(rm, "reward model")
    tokenizer = modeling.load_tokenizer(sft, padding_side="left")  # rollouts continue prompts from the right
    modeling.require_same_tokenizer(tokenizer, modeling.load_tokenizer(rm), "policy", "reward model")
    rows, label = load_stage_rows(script_args, "prompts")
    prompts = build_prompt_dataset(rows, tokenizer, script_args.max_prompt_length, label, "ppo",
                                   max_rows=script_args.max_rows)
    peft_config = modeling.build_peft_config(model_args, "CAUSAL_LM")
    policy = modeling.load_causal_lm(sft, model_args, "SFT policy")
    explicit_ref = ppo_needs_explicit_reference(peft_config is not None, PartialState().num_processes)
    ref_policy = modeling.load_causal_lm(sft, what="SFT reference") if explicit_ref else None
    reward_model = modeling.load_reward_model(rm)
    value_model = copy.deepcopy(reward_model)  # InstructGPT: the value function starts from the RM
    apply_global_batch(script_args.global_batch_size, training_args)
    runs.start_stage(out, "ppo", (script_args, training_args, model_args), is_main)
    training_args.push_to_hub = not hub_id and training_args.push_to_hub  # pushed below: merged model + card
    trainer = PPOTrainer(
        args=training_args, processing_class=tokenizer, model=policy, ref_model=ref_policy,
        reward_model=reward_model, value_model=value_model, train_dataset=prompts,
        eval_dataset=prompts.select(range(min(script_args.eval_rows, len(prompts)))), peft_config=peft_config,
    )
    trainer.train()
    report_rank(trainer, "ppo")
    if is_main:
        save_log_history(trainer, out)
        policy = trainer.accelerator.unwrap_model(trainer.model).policy
        modeling.save_stage_model(policy, tokenizer, out, sft, model_args)
    summary = last_logged(trainer, ["objective/scores", "objective/kl", "objective/rlhf_reward", "episode"])
    runs.finish_stage(out, "ppo", started, {k.split("/")[-1]: v for k, v in summary.items()}, is_main)
    if hub_id and is_main:
        hub.push_stage(out, hub_id)


def make_parser():
    """The stage's config parser (TRL's TrlParser over its dataclasses); the same as `rlhf-kit ppo`."""
    return make_stage_parser((PPOArguments, PPOConfig, ModelConfig))


if __name__ == "__main__":
    run_recipe(main, make_parser)
