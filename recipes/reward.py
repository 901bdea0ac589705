"""Stage 2 -- reward model from comparisons (InstructGPT Sec. 3.5): initialised from the SFT model, trained with
-log sigma(r(x, y_w) - r(x, y_l)) either K-wise (all C(K,2) pairs of a ranking in one batch element, InstructGPT's
Eq. 1) or pairwise. Wraps TRL's ``RewardTrainer``; LoRA with the score head trained and saved; the merged model is
what PPO loads.

    accelerate launch recipes/reward.py --config recipes/configs/demo/reward.yaml
"""

import time

from rlhf_kit.configs import RewardArguments, parse_stage_args
from rlhf_kit.errors import exit_on_user_error
from rlhf_kit.trl_compat import ModelConfig, RewardConfig


def main(script_args: RewardArguments, training_args: RewardConfig, model_args: ModelConfig):
    from accelerate import PartialState

    from rlhf_kit import hub, modeling, runs
    from rlhf_kit.data import load_rows, load_stage_rows
    from rlhf_kit.ranking import RankingRewardTrainer, build_reward_dataset
    from rlhf_kit.training import (
        apply_global_batch,
        gather_full_state_dict,
        last_logged,
        report_rank,
        save_log_history,
        setup_run,
        train_with_resume,
    )
    from rlhf_kit.trl_compat import RewardTrainer

    setup_run(training_args)
    started, out, is_main = time.time(), training_args.output_dir, PartialState().is_main_process
    if runs.skip_if_complete(out, "reward", script_args.force):
        return
    hub_id = hub.check_push_request(training_args)
    sft = model_args.model_name_or_path
    runs.require_stage_output(sft, "SFT model")
    tokenizer = modeling.load_tokenizer(sft)
    prepare = lambda rows, label: build_reward_dataset(  # noqa: E731
        rows, label, tokenizer, training_args.max_length, script_args.ranking_loss, script_args.k_max,
        script_args.max_rows)
    train_set = prepare(*load_stage_rows(script_args, "comparisons"))
    held = script_args.eval_dataset_path
    eval_set = prepare(load_rows(held, script_args.dataset_split), held) if held else None
    model = modeling.load_reward_model(sft, model_args, "SFT model")
    model.config.pad_token_id = tokenizer.pad_token_id
    apply_global_batch(script_args.global_batch_size, training_args)
    runs.start_stage(out, "reward", (script_args, training_args, model_args), is_main)
    kwise = script_args.ranking_loss == "kwise"
    trainer_cls = RankingRewardTrainer if kwise else RewardTrainer
    extra = {"use_margins": script_args.use_margins} if kwise else {}
    trainer = trainer_cls(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                          processing_class=tokenizer, peft_config=modeling.build_peft_config(model_args, "SEQ_CLS"),
                          **extra)
    metrics = train_with_resume(trainer, out, script_args.force)
    report_rank(trainer, "reward")
    summary = {"rows": len(train_set), "ranking_loss": script_args.ranking_loss,
               "train_loss": metrics.get("train_loss")}
    if eval_set is not None:
        summary["heldout_accuracy"] = trainer.evaluate()["eval_accuracy"]
    summary.update(last_logged(trainer, ["accuracy"]))
    state_dict = gather_full_state_dict(trainer)  # every rank takes part
    if is_main:
        save_log_history(trainer, out)
        modeling.save_stage_model(trainer.model, tokenizer, out, sft, model_args, state_dict)
    runs.finish_stage(out, "reward", started, summary, is_main)
    if hub_id and is_main:
        hub.push_stage(out, hub_id)


if __name__ == "__main__":
    exit_on_user_error(lambda: main(*parse_stage_args((RewardArguments, RewardConfig, ModelConfig))))
