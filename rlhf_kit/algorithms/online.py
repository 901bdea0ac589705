"""RLOO and GRPO: TRL's maintained online trainers from the SFT policy against the reward stage's model.

Both sample several responses per prompt and use the group itself as the baseline, so neither trains a value
model (PPO's critic):

- RLOO (Ahmadian et al. 2024, "Back to Basics", after Kool et al. 2019): each response's advantage is its reward
  minus the mean reward of the prompt's other k - 1 responses; TRL's ``RLOOTrainer``.
- GRPO (Shao et al. 2024, DeepSeekMath, Sec. 4.1): the reward standardised within the prompt's group, a clipped
  policy ratio as PPO's; TRL's ``GRPOTrainer``.

Both keep InstructGPT's KL to SFT (``beta``; with LoRA the reference is the SFT policy itself, the adapter disabled).

The reward model enters as a reward *function* (:func:`reward_function`), not as the model: TRL scores a model by
re-applying the chat template to prompt + completion, which appends the template's text after the end token
(ChatML's newline), so the reward would be read one token later than the reward stage trained it. The function
scores each (prompt, completion) as every rlhf_kit stage does (:func:`rlhf_kit.eval.evaluation.score_with_reward_model`:
reply ids ending at the end token, the score at the last one): the smallest change that makes TRL's trainers see the
reward model PPO sees.
"""

from __future__ import annotations

TRAINERS = ("rloo", "grpo")


def reward_function(reward_model, tokenizer, batch_size: int = 64, missing_eos_penalty: float | None = None):
    """A TRL reward function (``prompts`` as messages, ``completions``, ``completion_ids`` -> one float each) giving
    PPO's reward: the reward model reads the prompt with its generation prompt and the completion's tokens as
    sampled, up to and including the end token, and scores at the last one (``rlhf_kit.ppo.core.get_reward`` on a
    rollout); a completion cut off before the end token loses ``missing_eos_penalty`` (PPO's, Huang et al. 2024,
    detail 14). Without it a policy learns nothing from running out of tokens: the real track's first RLOO run,
    whose cut-off answers were scored as if they had ended, had half or more of its batch's answers cut off at
    96 tokens in 26 of its 40 steps, all of them in the last. A caller
    with text only (no ``completion_ids``) is scored as every stage scores text (the end token appended).

    TRL decodes the completions itself, outside ``rlhf_kit.sampling.generation`` where sampled tokens are counted, and
    passes each generated batch to the reward functions exactly once (also when ``num_iterations`` trains on it more
    than once), so the sampled tokens are counted here, as TRL hands them over (``rlhf_kit.core.work``)."""
    from rlhf_kit.core import work
    from rlhf_kit.data.datasets import chat_ids
    from rlhf_kit.data.rows import prompt_key
    from rlhf_kit.eval.evaluation import score_ids, score_with_reward_model

    eos = tokenizer.eos_token_id

    def reward_model_score(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        if completion_ids is None:
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            return score_with_reward_model(reward_model, tokenizer, prompts, texts, batch_size)
        work.count("sampled", sum(len(ids) for ids in completion_ids))
        ended = [eos in ids for ids in completion_ids]
        seqs = [chat_ids(tokenizer, p, add_generation_prompt=True) + list(ids[: ids.index(eos) + 1] if e else ids)
                for p, ids, e in zip(prompts, completion_ids, ended)]
        groups = [prompt_key(p) for p in prompts]  # a prompt's K completions in one packed row, the prompt once
        scores = score_ids(reward_model, seqs, tokenizer.pad_token_id, batch_size, groups=groups)
        penalty = missing_eos_penalty or 0.0
        return [s if e else s - penalty for s, e in zip(scores, ended)]

    return reward_model_score


def prompt_dataset(ds, tokenizer, max_prompt_length: int, label: str, stage: str, max_rows: int | None = None):
    """PPO's prompts as TRL's online trainers take them: a conversational ``prompt`` column, over-length prompts
    dropped by the same rule as PPO's (:func:`rlhf_kit.data.datasets.build_prompt_dataset`)."""
    from rlhf_kit.data.datasets import build_prompt_dataset

    rows = build_prompt_dataset(ds, tokenizer, max_prompt_length, label, stage, keep_columns=("prompt",),
                                max_rows=max_rows)
    return rows.remove_columns("input_ids")


def build_online_trainer(kind: str, model, reward_model, tokenizer, args, train_dataset, peft_config, batch_size,
                         missing_eos_penalty: float | None = None):
    """TRL's RLOOTrainer (``kind`` rloo) or GRPOTrainer (grpo) on ``model`` with the reward model as function."""
    from rlhf_kit.integrations.trl import GRPOTrainer, RLOOTrainer

    trainer = {"rloo": RLOOTrainer, "grpo": GRPOTrainer}[kind]
    return trainer(model=model, reward_funcs=reward_function(reward_model, tokenizer, batch_size, missing_eos_penalty),
                   args=args, train_dataset=train_dataset, processing_class=tokenizer, peft_config=peft_config)


def train_online(kind: str, run, script_args, training_args, model_args) -> None:
    """The rloo / grpo stage inside ``run`` (the recipe's :class:`rlhf_kit.run.stage.StageRun`): SFT policy, reward
    model and prompts loaded and checked, the trainer run with resume, the policy saved as every training stage saves
    it (merged model and adapter)."""
    from rlhf_kit.core import runs
    from rlhf_kit.data.cards import load_stage_rows
    from rlhf_kit.integrations import modeling
    from rlhf_kit.integrations.training import (
        apply_global_batch,
        gather_full_state_dict,
        last_logged,
        report_rank,
        save_log_history,
    )

    out = training_args.output_dir
    sft, rm = model_args.model_name_or_path, script_args.reward_model_path
    runs.require_stage_output(sft, "SFT policy")
    runs.require_stage_output(rm, "reward model")
    tokenizer = modeling.load_tokenizer(sft)
    modeling.require_same_tokenizer(tokenizer, modeling.load_tokenizer(rm), "policy", "reward model")
    rows, label = load_stage_rows(script_args, "prompts")
    dataset = prompt_dataset(rows, tokenizer, script_args.max_prompt_length, label, kind, script_args.max_rows)
    reward_model = modeling.load_reward_model(rm, what="reward model", require_head=True)
    reward_model.eval().requires_grad_(False)
    model = modeling.load_causal_lm(sft, model_args, "SFT policy")
    apply_global_batch(script_args.global_batch_size, training_args)
    run.start(script_args, training_args, model_args)
    trainer = build_online_trainer(kind, model, reward_model, tokenizer, training_args, dataset,
                                   modeling.build_peft_config(model_args, "CAUSAL_LM"),
                                   training_args.per_device_train_batch_size, script_args.missing_eos_penalty)
    metrics = run.train(trainer)
    report_rank(trainer, kind)
    summary = {"prompts": len(dataset), "train_loss": metrics.get("train_loss")}
    summary.update(last_logged(trainer, ["reward", "kl", "completions/mean_length"]))
    state_dict = gather_full_state_dict(trainer.accelerator, trainer.model, trainer.model_wrapped)
    if run.is_main:
        save_log_history(trainer, out)
        modeling.save_stage_model(trainer.model, tokenizer, out, sft, model_args, state_dict)
    run.finish(summary)
