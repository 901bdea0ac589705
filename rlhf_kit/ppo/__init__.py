"""PPO, rlhf_kit's own: build the trainer, run it, hand back the trained policy; rlhf_kit's metric names.

Recipes, the report, eval and the Hub export see PPO only through this package's seam (this module):
``config`` (TRL 1.12's PPOConfig keys), ``trainer`` (setup and the loop), ``rollout`` (sampling), ``core`` (tensor
helpers), ``checkpoint`` (kill-safe resume), ``ptx`` (PPO-ptx) and ``monitor`` (judge-scored probes:
over-optimisation caught, ``select_checkpoint: judge``). Nothing here imports TRL: its PPOTrainer was
removed in TRL 1.13, and TRL 1.12's behaviour survives as a golden file (tests/test_ppo_golden.py).

Metric names (CleanRL-style namespaces; TRL 1.12's key in brackets, which the golden file uses):

- ``ppo/*`` -- the RLHF objective per update, averaged over the batch of responses:
  ``ppo/scores`` r(x, y) of the reward model, after the missing-EOS penalty [objective/scores];
  ``ppo/kl`` KL(pi_RL || pi_SFT) summed over a response's tokens [objective/kl];
  ``ppo/kl_penalty`` -beta * that KL [objective/non_score_reward];
  ``ppo/rlhf_reward`` scores + kl_penalty, what PPO maximises [objective/rlhf_reward];
  ``ppo/entropy`` -log pi_RL of the sampled response, summed over tokens [objective/entropy];
  ``ppo/kl_coef`` beta used for this batch (changes with the adaptive controller) [none];
  ``ppo/episode`` responses sampled so far [episode].
- ``losses/*`` -- ``losses/policy`` clipped surrogate [loss/policy_avg], ``losses/value`` clipped value loss
  [loss/value_avg], ``losses/ptx`` LM loss on pretraining text with PPO-ptx [none].
- ``charts/*`` -- diagnostics: ``approx_kl`` [policy/approxkl_avg], ``clipfrac`` [policy/clipfrac_avg],
  ``value_clipfrac`` [val/clipfrac_avg], ``policy_entropy`` [policy/entropy_avg], ``ratio`` [val/ratio],
  ``ratio_var`` [val/ratio_var], ``num_eos_tokens`` [val/num_eos_tokens], ``learning_rate`` [lr],
  ``episodes_per_second`` [eps].
- ``probe/*`` -- the over-optimisation monitor's figures at probed updates (rlhf_kit/ppo/monitor.py) [none].
"""

from __future__ import annotations

METRIC_NAMES = {
    "objective/scores": "ppo/scores",
    "objective/kl": "ppo/kl",
    "objective/non_score_reward": "ppo/kl_penalty",
    "objective/rlhf_reward": "ppo/rlhf_reward",
    "objective/entropy": "ppo/entropy",
    "episode": "ppo/episode",
    "loss/policy_avg": "losses/policy",
    "loss/value_avg": "losses/value",
    "policy/approxkl_avg": "charts/approx_kl",
    "policy/clipfrac_avg": "charts/clipfrac",
    "val/clipfrac_avg": "charts/value_clipfrac",
    "policy/entropy_avg": "charts/policy_entropy",
    "val/ratio": "charts/ratio",
    "val/ratio_var": "charts/ratio_var",
    "val/num_eos_tokens": "charts/num_eos_tokens",
    "lr": "charts/learning_rate",
    "eps": "charts/episodes_per_second",
}
# Metrics that depend on wall time, not on the computation (left out when runs are compared for equality).
TIMING_METRICS = ("charts/episodes_per_second",)
SUMMARY_METRICS = ("ppo/scores", "ppo/kl", "ppo/rlhf_reward", "ppo/kl_coef", "ppo/episode")


def rename_metrics(record: dict) -> dict:
    """A log record with TRL 1.12's PPO keys renamed to rlhf_kit's (other keys, e.g. ``step``, kept)."""
    return {METRIC_NAMES.get(k, k): v for k, v in record.items()}


def build_ppo_trainer(args, tokenizer, policy, ref_policy, reward_model, value_model, train_dataset,
                      eval_dataset=None, peft_config=None, **extras):
    """rlhf_kit's PPO trainer (``extras``: ``kl_controller``, ``ptx_batches``, ``ptx_coef``, ``checkpointer``,
    ``sampler``; see :class:`rlhf_kit.ppo.trainer.PPOTrainer`)."""
    from rlhf_kit.ppo.trainer import PPOTrainer

    return PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref_policy,
                      reward_model=reward_model, value_model=value_model, train_dataset=train_dataset,
                      eval_dataset=eval_dataset, peft_config=peft_config, **extras)


def train_ppo(trainer):
    """Run PPO and return the trained policy, unwrapped (a PeftModel with LoRA)."""
    trainer.train()
    return trainer.policy


def load_ppo_inputs(script_args, training_args, model_args) -> dict:
    """Tokenizer, prompts, LoRA config and the four models PPO needs, checked (keyword arguments of
    :func:`build_ppo_trainer`). InstructGPT Sec. 3.5: policy and reference from the SFT model (with LoRA the
    reference is the adapter-disabled policy, under DDP too), value function initialised from the reward model. A
    later RLHF round
    starts the policy elsewhere (``ref_model_path`` keeps SFT as the reference)."""
    import copy

    from rlhf_kit.core import runs
    from rlhf_kit.core.errors import UserError
    from rlhf_kit.data.cards import load_stage_rows
    from rlhf_kit.data.datasets import build_prompt_dataset
    from rlhf_kit.integrations import modeling
    from rlhf_kit.integrations.trl import zero3_init_disabled

    sft, rm = model_args.model_name_or_path, training_args.reward_model_path
    runs.require_stage_output(sft, "SFT policy")
    runs.require_stage_output(rm, "reward model")
    ref = script_args.ref_model_path or sft
    if ref != sft:
        runs.require_stage_output(ref, "reference policy")
    tokenizer = modeling.load_tokenizer(sft, padding_side="left")  # rollouts continue prompts from the right
    modeling.require_same_tokenizer(tokenizer, modeling.load_tokenizer(rm), "policy", "reward model")
    rows, label = load_stage_rows(script_args, "prompts")
    prompts = build_prompt_dataset(rows, tokenizer, script_args.max_prompt_length, label, "ppo",
                                   max_rows=script_args.max_rows)
    peft_config = modeling.build_peft_config(model_args, "CAUSAL_LM")
    if script_args.value_use_peft and peft_config is None:  # before any model loads
        raise UserError("value_use_peft: true needs use_peft: true (the value model's LoRA takes the policy's "
                        "lora_r, lora_alpha and lora_target_modules); set use_peft: true or value_use_peft: false")
    policy = modeling.load_causal_lm(sft, model_args, "SFT policy")
    explicit_ref = ref != sft or peft_config is None  # with LoRA the reference is the adapter-disabled policy
    if ref != sft:
        modeling.require_same_tokenizer(tokenizer, modeling.load_tokenizer(ref), "policy", "reference policy")
    # The frozen models (reward, reference) take the policy's dtype, e.g. bfloat16 on a CPU with AMX; a value model
    # trained in full keeps float32 weights (bf16 weights would round most Adam updates away), a LoRA one only its
    # adapters and head.
    with zero3_init_disabled():  # frozen, outside the DeepSpeed engine: never partitioned by ZeRO-3's zero.Init
        reward_model = modeling.load_reward_model(rm, require_head=True, dtype=model_args.dtype)
        ref_policy = (modeling.load_causal_lm(ref, what="reference policy", dtype=model_args.dtype)
                      if explicit_ref else None)
    if script_args.value_use_peft:
        # A LoRA value model: its backward skips the frozen weights' gradients and AdamW holds adapter states only,
        # the one choice InstructGPT's recipe leaves free (it names the value model's init, not how it is tuned).
        value_model = modeling.lora_value_model(reward_model, peft_config)
    else:
        value_model = copy.deepcopy(reward_model).float()
    return {
        "tokenizer": tokenizer, "policy": policy, "peft_config": peft_config, "ref_policy": ref_policy,
        "reward_model": reward_model, "value_model": value_model,
        "train_dataset": prompts, "eval_dataset": prompts.select(range(min(script_args.eval_rows, len(prompts)))),
    }


def build_loop_extras(script_args, training_args, tokenizer, train_dataset=None) -> dict:
    """rlhf_kit's loop extras from the PPO arguments: the KL controller, PPO-ptx batches when gamma > 0, and the
    over-optimisation monitor when probes are set (``train_dataset``: PPO's prompts, which probes must avoid)."""
    from accelerate import PartialState

    from rlhf_kit.ppo.monitor import build_monitor
    from rlhf_kit.ppo.trainer import AdaptiveKLController, FixedKLController

    extras = {"kl_controller": FixedKLController(training_args.kl_coef)}
    monitor = build_monitor(script_args, training_args, tokenizer, train_dataset)
    if monitor is not None:
        extras["monitor"] = monitor
    if script_args.kl_target is not None:
        extras["kl_controller"] = AdaptiveKLController(training_args.kl_coef, script_args.kl_target,
                                                       script_args.kl_horizon)
    if script_args.ptx_coef > 0:
        from rlhf_kit.ppo.ptx import PtxBatches, load_ptx_examples

        examples = load_ptx_examples(script_args.ptx_dataset, tokenizer, script_args.ptx_max_length)
        seed = training_args.seed + PartialState().process_index * 100003  # one stream per process
        extras["ptx_batches"] = PtxBatches(examples, training_args.per_device_train_batch_size,
                                           tokenizer.pad_token_id, seed)
        extras["ptx_coef"] = script_args.ptx_coef
    return extras
