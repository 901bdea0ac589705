"""rlhf_kit's PPO loop: a subclass of TRL 1.12's PPOTrainer whose ``train()`` is written here.

TRL still builds everything (LoRA wrapping, the policy+value wrapper, the accelerator, optimizer and scheduler,
the prompt dataloader) and lends its generation helpers; rlhf_kit owns the loop, so it can checkpoint and resume,
mix in pretraining gradients (PPO-ptx) and steer beta (adaptive KL). With those extras off the loop reproduces
TRL's own ``train()`` to the last bit on CPU (tests/test_ppo_loop.py, the oracle test), so every choice below is
TRL's unless it says otherwise.

One update, top to bottom (names as in the papers):

1. **rollout** -- sample a response y to each prompt x from pi_RL; score it with the reward model r(x, y);
   keep log pi_RL(y_t|...), log pi_SFT(y_t|...) and the value V(s_t) of every response token.
2. **rewards** -- per-token KL penalty R_t = -beta * KL_t, plus r(x, y) on the last token (Ziegler et al. 2019
   Eq. 2; InstructGPT Eq. 2, Ouyang et al. 2022). KL_t is the k1 or k3 estimator (Schulman 2020,
   http://joschu.net/blog/kl-approx.html).
3. **advantages and returns** -- GAE(gamma, lambda) (Schulman et al. 2016), advantages whitened over the batch
   (Huang et al. 2024, "The N+ implementation details of RLHF with PPO", detail 7).
4. **PPO epochs** -- a few passes over the batch in shuffled minibatches: clipped surrogate policy loss and clipped
   value loss (Schulman et al. 2017 Eq. 7 and 9), plus gamma_ptx times the language-model loss on pretraining text
   (PPO-ptx, InstructGPT Eq. 2).
5. **KL controller** -- fixed beta, or the adaptive controller of Ziegler et al. (2019, Sec. 2.2).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from rlhf_kit.trl_compat import (
    INVALID_LOGPROB,
    PPOTrainer,
    batch_generation,
    first_true_indices,
    forward,
    get_reward,
    masked_mean,
    masked_whiten,
    policy_of,
    progress_callback_classes,
    reference_context,
    selective_log_softmax,
    truncate_response,
    unwrap_model_for_generation,
    value_model_of,
)


class FixedKLController:
    """A constant beta (TRL's PPOTrainer, InstructGPT)."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_episodes: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. (2019, Sec. 2.2): beta_{t+1} = beta_t (1 + K_beta e_t), e_t = clip(KL_t / KL_target - 1,
    -0.2, 0.2), with K_beta = n_episodes / horizon as in their code (openai/lm-human-preferences)."""

    def __init__(self, kl_coef: float, target: float, horizon: int):
        super().__init__(kl_coef)
        self.target, self.horizon = target, horizon

    def update(self, current_kl: float, n_episodes: int) -> None:
        proportional_error = float(np.clip(current_kl / self.target - 1, -0.2, 0.2))
        self.value *= 1 + proportional_error * n_episodes / self.horizon


class PromptBatches:
    """Endless prompt batches, exactly TRL's ``repeat_generator`` (``while True: yield from dataloader``), but with
    a position that can be saved and restored: the RNG state when the current pass began (the shuffle is drawn
    from it) and how many batches of that pass were taken."""

    def __init__(self, dataloader, sampler_generator=None):
        self.dataloader, self.generator = dataloader, sampler_generator
        self._iterator, self.position, self.pass_rng = None, 0, None

    def _rng(self) -> dict:
        return {"torch": torch.get_rng_state(),
                "sampler": self.generator.get_state() if self.generator is not None else None}

    def __next__(self):
        if self._iterator is None:
            self.pass_rng, self.position = self._rng(), 0
            self._iterator = iter(self.dataloader)
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._iterator = None
            return next(self)
        self.position += 1
        return batch

    def state_dict(self) -> dict:
        return {"pass_rng": self.pass_rng, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Replay the saved pass up to its position (the caller restores the RNG states afterwards)."""
        if state["pass_rng"] is None:
            return
        torch.set_rng_state(state["pass_rng"]["torch"])
        if self.generator is not None and state["pass_rng"]["sampler"] is not None:
            self.generator.set_state(state["pass_rng"]["sampler"])
        self.pass_rng, self._iterator = state["pass_rng"], iter(self.dataloader)
        for _ in range(state["position"]):
            next(self._iterator)
        self.position = state["position"]


class RLHFKitPPOTrainer(PPOTrainer):
    """TRL's PPOTrainer with rlhf_kit's ``train()``. Extra keyword arguments:

    - ``kl_controller``: :class:`FixedKLController` (default, beta = ``args.kl_coef``) or
      :class:`AdaptiveKLController`;
    - ``ptx_batches`` / ``ptx_coef``: PPO-ptx, a :class:`rlhf_kit.ppo_ptx.PtxBatches` and gamma;
    - ``checkpointer``: a :class:`rlhf_kit.ppo_checkpoint.PPOCheckpointer` (save every ``save_steps`` updates,
      resume from the last complete checkpoint).
    """

    def __init__(self, *args, kl_controller=None, ptx_batches=None, ptx_coef: float = 0.0, checkpointer=None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.kl_controller = kl_controller or FixedKLController(self.args.kl_coef)
        self.ptx_batches, self.ptx_coef, self.checkpointer = ptx_batches, ptx_coef, checkpointer
        self.timings = {"generate": 0.0, "rollout": 0.0}  # seconds spent sampling, and in the whole rollout phase
        from rlhf_kit.trl_compat import dataloader_generator

        self.prompt_batches = PromptBatches(self.dataloader, dataloader_generator(self.dataloader))
        for callback in progress_callback_classes():
            self.remove_callback(callback)  # our own bar counts episodes, not updates

    # --- one update, step by step -------------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, queries: torch.Tensor, generation_kwargs: dict) -> dict:
        """Sample responses from pi_RL and score them: log-probs under pi_RL and pi_SFT, values, RM scores."""
        from transformers import GenerationConfig

        args, tok, model, acc = self.args, self.processing_class, self.model, self.accelerator
        context_length, step = queries.shape[1], args.local_rollout_forward_batch_size
        started = time.perf_counter()
        with unwrap_model_for_generation(model, acc, gather_deepspeed3_params=args.ds3_gather_for_generation,
                                         generation_kwargs=generation_kwargs) as unwrapped:
            query_responses, logitss = batch_generation(policy_of(unwrapped), queries, step, tok.pad_token_id,
                                                        GenerationConfig(**generation_kwargs))
        self.timings["generate"] += time.perf_counter() - started
        out = {k: [] for k in ("responses", "postprocessed", "logprobs", "ref_logprobs", "sequence_lengths",
                               "scores", "values")}
        for i in range(0, queries.shape[0], step):
            query, query_response = queries[i: i + step], query_responses[i: i + step]
            response = query_response[:, context_length:]
            logprob = selective_log_softmax(logitss[i: i + step], response)
            if self.ref_model is None:  # LoRA: the reference is the policy with its adapter disabled
                with reference_context(self):
                    ref_output = forward(policy_of(model), query_response, tok.pad_token_id)
            else:
                ref_output = forward(self.ref_model, query_response, tok.pad_token_id)
            ref_logits = ref_output.logits[:, context_length - 1: -1]
            ref_logits /= args.temperature + 1e-7
            ref_logprob = selective_log_softmax(ref_logits, response)
            # The reward model reads the response cut after the stop token (Huang et al. 2024, detail 4).
            postprocessed = response
            if self.stop_token_id is not None:
                postprocessed = truncate_response(self.stop_token_id, tok.pad_token_id, response)
            sequence_length = first_true_indices(postprocessed == tok.pad_token_id) - 1
            full_value, _, _ = get_reward(value_model_of(model, acc), query_response, tok.pad_token_id,
                                          context_length)
            _, score, _ = get_reward(self.reward_model, torch.cat((query, postprocessed), 1), tok.pad_token_id,
                                     context_length)
            for key, value in zip(out, (response, postprocessed, logprob, ref_logprob, sequence_length, score,
                                        full_value[:, context_length - 1: -1].squeeze(-1))):
                out[key].append(value)
        batch = {k: torch.cat(v, 0) for k, v in out.items()}
        batch["query_responses"], batch["context_length"] = query_responses, context_length
        # A response that never stops scores lower (Huang et al. 2024, detail 14: missing-EOS penalty).
        contains_eos = torch.any(batch["postprocessed"] == tok.eos_token_id, dim=-1)
        if args.missing_eos_penalty is not None:
            batch["scores"][~contains_eos] -= args.missing_eos_penalty
        # Positions after the response's end are padding: fixed log-probs there, and no value after end + 1.
        idxs = torch.arange(batch["responses"].shape[1], device=queries.device).repeat(queries.shape[0], 1)
        batch["padding_mask"] = idxs > batch["sequence_lengths"].unsqueeze(1)
        batch["padding_mask_p1"] = idxs > (batch["sequence_lengths"] + 1).unsqueeze(1)
        for key in ("logprobs", "ref_logprobs"):
            batch[key] = torch.masked_fill(batch[key], batch["padding_mask"], INVALID_LOGPROB)
        batch["values"] = torch.masked_fill(batch["values"], batch["padding_mask_p1"], 0)
        self.timings["rollout"] += time.perf_counter() - started
        return batch

    @torch.no_grad()
    def compute_rewards(self, b: dict) -> None:
        """R_t = -beta KL_t on every token, + r(x, y) on the last one (Ziegler et al. 2019; InstructGPT Eq. 2)."""
        args = self.args
        logr = b["ref_logprobs"] - b["logprobs"]
        b["kl"] = -logr if args.kl_estimator == "k1" else (logr.exp() - 1) - logr  # k3: Schulman (2020)
        b["non_score_reward"] = -self.kl_controller.value * b["kl"]
        rewards = b["non_score_reward"].clone()
        sequence_lengths, sequence_lengths_p1 = b["sequence_lengths"], b["sequence_lengths"] + 1
        rows = torch.arange(rewards.size(0), device=rewards.device)
        last = torch.where(sequence_lengths_p1 < rewards.size(1), sequence_lengths_p1, sequence_lengths)
        rewards[rows, last] += b["scores"]
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, mask=~b["padding_mask_p1"], shift_mean=False)
            rewards = torch.masked_fill(rewards, b["padding_mask_p1"], 0)
        b["rewards"] = rewards

    @torch.no_grad()
    def compute_advantages(self, b: dict) -> None:
        """GAE (Schulman et al. 2016): A_t = sum_l (gamma lambda)^l delta_{t+l}, delta_t = R_t + gamma V_{t+1} - V_t;
        returns = A + V are the value targets; advantages whitened (Huang et al. 2024, detail 7)."""
        args, values, rewards = self.args, b["values"], b["rewards"]
        lastgaelam, advantages_reversed, gen_length = 0, [], b["responses"].shape[1]
        for t in reversed(range(gen_length)):
            nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
            delta = rewards[:, t] + args.gamma * nextvalues - values[:, t]
            lastgaelam = delta + args.gamma * args.lam * lastgaelam
            advantages_reversed.append(lastgaelam)
        advantages = torch.stack(advantages_reversed[::-1], axis=1)
        b["returns"] = advantages + values
        advantages = masked_whiten(advantages, ~b["padding_mask"])
        b["advantages"] = torch.masked_fill(advantages, b["padding_mask"], 0)

    def ppo_losses(self, b: dict, inds) -> tuple[torch.Tensor, dict]:
        """Clipped surrogate policy loss and clipped value loss on one micro-batch (Schulman et al. 2017 Eq. 7, 9)."""
        args, ctx = self.args, b["context_length"]
        padding_mask, padding_mask_p1 = b["padding_mask"][inds], b["padding_mask_p1"][inds]
        mb_values, mb_return, mb_advantage = b["values"][inds], b["returns"][inds], b["advantages"][inds]
        output, vpred_temp = forward(self.model, b["query_responses"][inds], self.processing_class.pad_token_id)
        logits = output.logits[:, ctx - 1: -1]
        logits /= args.temperature + 1e-7
        new_logprobs = selective_log_softmax(logits, b["responses"][inds])
        new_logprobs = torch.masked_fill(new_logprobs, padding_mask, INVALID_LOGPROB)
        vpred = torch.masked_fill(vpred_temp[:, ctx - 1: -1].squeeze(-1), padding_mask_p1, 0)
        vpredclipped = torch.clamp(vpred, mb_values - args.cliprange_value, mb_values + args.cliprange_value)
        vf_losses1, vf_losses2 = torch.square(vpred - mb_return), torch.square(vpredclipped - mb_return)
        vf_loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), ~padding_mask_p1)
        logprobs_diff = new_logprobs - b["logprobs"][inds]
        ratio = torch.exp(logprobs_diff)
        pg_losses = -mb_advantage * ratio
        pg_losses2 = -mb_advantage * torch.clamp(ratio, 1.0 - args.cliprange, 1.0 + args.cliprange)
        pg_loss = masked_mean(torch.max(pg_losses, pg_losses2), ~padding_mask)
        loss = pg_loss + args.vf_coef * vf_loss
        with torch.no_grad():
            prob_dist = torch.nn.functional.softmax(logits, dim=-1)
            entropy = torch.logsumexp(logits, dim=-1) - torch.sum(prob_dist * logits, dim=-1)
            stats = {
                "approx_kl": 0.5 * (logprobs_diff**2).mean(),  # Schulman (2020)
                "clipfrac": masked_mean((pg_losses2 > pg_losses).float(), ~padding_mask),
                "policy": pg_loss, "value": vf_loss,
                "value_clipfrac": masked_mean((vf_losses2 > vf_losses1).float(), ~padding_mask_p1),
                "entropy": entropy.mean(), "ratio": ratio.mean(),
            }
        return loss, stats

    def ptx_loss(self) -> torch.Tensor:
        """Mean next-token NLL of the policy on one pretraining batch (PPO-ptx, InstructGPT Eq. 2)."""
        batch = self.ptx_batches.next_batch(self.accelerator.device)
        return policy_of(self.model, self.accelerator)(**batch).loss

    def ppo_epochs(self, b: dict) -> dict[str, torch.Tensor]:
        """``num_ppo_epochs`` passes over the batch, each in freshly shuffled minibatches of micro-batches."""
        args, acc = self.args, self.accelerator
        shape = (args.num_ppo_epochs, args.num_mini_batches, args.gradient_accumulation_steps)
        names = ["approx_kl", "clipfrac", "policy", "value", "value_clipfrac", "entropy", "ratio"]
        stats = {k: torch.zeros(shape, device=acc.device) for k in names + (["ptx"] if self.ptx_coef else [])}
        for epoch in range(args.num_ppo_epochs):
            b_inds = np.random.permutation(args.local_batch_size)
            for minibatch, mb_start in enumerate(range(0, args.local_batch_size, args.local_mini_batch_size)):
                mb_inds = b_inds[mb_start: mb_start + args.local_mini_batch_size]
                for micro, start in enumerate(range(0, args.local_mini_batch_size, args.per_device_train_batch_size)):
                    with acc.accumulate(self.model):
                        loss, step_stats = self.ppo_losses(b, mb_inds[start: start + args.per_device_train_batch_size])
                        if self.ptx_coef:
                            step_stats["ptx"] = self.ptx_loss()
                            loss = loss + self.ptx_coef * step_stats["ptx"]
                        acc.backward(loss)
                        self.optimizer.step()
                        self.optimizer.zero_grad()
                        for k, v in step_stats.items():
                            stats[k][epoch, minibatch, micro] = v.detach()
        return stats

    @torch.no_grad()
    def batch_metrics(self, b: dict, stats: dict, episodes_per_second: float) -> dict[str, float]:
        """The update's metrics under rlhf_kit's names (see rlhf_kit/ppo.py), averaged over processes."""
        gather = self.accelerator.gather_for_metrics
        mean_kl = b["kl"].sum(1).mean()
        mean_entropy = ((-b["logprobs"]) * (~b["padding_mask"]).float()).sum(1).mean()
        mean_non_score_reward = b["non_score_reward"].sum(1).mean()
        rlhf_reward = mean_non_score_reward + b["scores"].mean()
        metrics = {
            "charts/episodes_per_second": episodes_per_second,
            "ppo/kl": gather(mean_kl).mean().item(),
            "ppo/entropy": gather(mean_entropy).mean().item(),
            "ppo/kl_penalty": gather(mean_non_score_reward).mean().item(),
            "ppo/rlhf_reward": gather(rlhf_reward).mean().item(),
            "ppo/scores": gather(b["scores"].mean()).mean().item(),
            "charts/approx_kl": gather(stats["approx_kl"]).mean().item(),
            "charts/clipfrac": gather(stats["clipfrac"]).mean().item(),
            "losses/policy": gather(stats["policy"]).mean().item(),
            "losses/value": gather(stats["value"]).mean().item(),
            "charts/value_clipfrac": gather(stats["value_clipfrac"]).mean().item(),
            "charts/policy_entropy": gather(stats["entropy"]).mean().item(),
            "charts/ratio": gather(stats["ratio"]).mean().item(),
            "charts/ratio_var": gather(stats["ratio"]).var().item(),
            "charts/num_eos_tokens": (b["responses"] == self.processing_class.eos_token_id).sum().item(),
            "charts/learning_rate": self.lr_scheduler.get_last_lr()[0],
            "ppo/episode": self.state.episode,
        }
        if "ptx" in stats:
            metrics["losses/ptx"] = gather(stats["ptx"]).mean().item()
        metrics["ppo/kl_coef"] = self.kl_controller.value
        return metrics

    # --- the loop ----------------------------------------------------------------------------------------------

    def _init_state(self) -> None:
        """TRL's trainer-state initialisation (step counters, logging/saving periods in updates)."""
        args, state = self.args, self.state
        state.global_step, state.episode = 0, 0
        state.max_steps, state.num_train_epochs = args.num_total_batches, args.total_episodes / self.train_dataset_len
        for name in ("logging_steps", "eval_steps", "save_steps"):
            value = getattr(args, name)
            if value is not None:
                setattr(state, name, math.ceil(state.max_steps * value) if value < 1 else value)

    def train(self):
        """Run the remaining PPO updates (all of them, or those after the checkpoint resumed from)."""
        args, acc = self.args, self.accelerator
        # Pure sampling from pi_RL: no top-k / top-p truncation (Huang et al. 2024, detail 13).
        generation_kwargs = {"max_new_tokens": args.response_length, "temperature": args.temperature + 1e-7,
                             "top_k": 0.0, "top_p": 1.0, "do_sample": True}
        acc.print("===training policy===")
        self.model.train()
        self._init_state()
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        if self.is_deepspeed_enabled:
            self.deepspeed = self.model_wrapped = self.model
        first_update = 1 + (self.checkpointer.resume(self) if self.checkpointer else 0)
        start_time, start_episode = time.time(), self.state.episode
        bar = self._progress_bar()
        for update in range(first_update, args.num_total_batches + 1):
            self.state.episode += args.batch_size
            queries = next(self.prompt_batches)["input_ids"].to(acc.device)
            batch = self.rollout(queries, generation_kwargs)
            self.compute_rewards(batch)
            self.compute_advantages(batch)
            stats = self.ppo_epochs(batch)
            # Not TRL's int(): on a CPU PPO runs well under one episode per second, which int() logs as 0.
            eps = (self.state.episode - start_episode) / (time.time() - start_time)
            metrics = self.batch_metrics(batch, stats, eps)
            self.kl_controller.update(metrics["ppo/kl"], args.batch_size)  # same beta on every process
            self.state.epoch = self.state.episode / self.train_dataset_len
            self.state.global_step += 1
            self.log(metrics)
            self.lr_scheduler.step()
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            if bar is not None:
                bar.set_postfix({k.split("/")[1]: f"{metrics[k]:.3g}" for k in ("ppo/scores", "ppo/kl")}, refresh=False)
                bar.update(args.batch_size)
            if self.checkpointer and self.checkpointer.due(self.state):
                self.checkpointer.save(self)
            del batch, stats
            if args.num_sample_generations > 0 and (update - 1) % self.sample_generations_freq == 0:
                self.generate_completions(sampling=True)
        if bar is not None:
            bar.close()
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)

    def _progress_bar(self):
        """Episodes done / total, with episodes per second and the time left (main process only)."""
        if self.args.disable_tqdm or not self.accelerator.is_main_process:
            return None
        from tqdm.auto import tqdm

        total = self.args.num_total_batches * self.args.batch_size
        return tqdm(total=total, initial=self.state.episode, unit="episode", desc="ppo", dynamic_ncols=True)
