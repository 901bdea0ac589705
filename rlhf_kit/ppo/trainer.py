"""rlhf_kit's PPO trainer, on Accelerate, transformers and peft (TRL removed its PPOTrainer in 1.13, PR #7020).

Everything is built here: LoRA wrapping (the reference policy is the same model with its adapter disabled, under DDP
too), the policy+value module that Accelerate prepares as one, AdamW and the learning-rate schedule from the
``TrainingArguments`` keys, the prompt dataloader, dropout switched off. The arithmetic of every step is TRL 1.12's
(its ``PPOTrainer.train()``), which ``tests/test_ppo_golden.py`` holds this trainer to with a golden file recorded
from TRL 1.12 itself; what differs says so below.

One update, top to bottom (names as in the papers):

1. **rollout** -- sample a response y to each prompt x from pi_RL (``rlhf_kit/sampling/generation.py``, the sampler
   every stage uses); score it with the reward model r(x, y); keep log pi_RL(y_t|...), log pi_SFT(y_t|...) and the value
   V(s_t) of every response token.
2. **rewards** -- per-token KL penalty R_t = -beta * KL_t, plus r(x, y) on the last token (Ziegler et al. 2019
   Eq. 2; InstructGPT Eq. 2, Ouyang et al. 2022). KL_t is the k1 or k3 estimator (Schulman 2020,
   http://joschu.net/blog/kl-approx.html).
3. **advantages and returns** -- GAE(gamma, lambda) (Schulman et al. 2016), advantages whitened over the batch
   (Huang et al. 2024, "The N+ implementation details of RLHF with PPO", detail 7).
4. **PPO epochs** -- a few passes over the batch in shuffled minibatches: clipped surrogate policy loss and clipped
   value loss (Schulman et al. 2017 Eq. 7 and 9), plus gamma_ptx times the language-model loss on pretraining text
   (PPO-ptx, InstructGPT Eq. 2).
5. **KL controller** -- fixed beta, or the adaptive controller of Ziegler et al. (2019, Sec. 2.2).

Deliberate differences from TRL 1.12: the rollouts' log pi_RL comes from a forward pass over the sampled tokens, not
from ``generate``'s scores (the one sampler keeps no logits); the per-minibatch statistics average over the
micro-batches a minibatch really has (TRL's array is sized by ``gradient_accumulation_steps`` and leaves zeros in it
when ``num_mini_batches`` > 1); episodes per second are a float (TRL's ``int()`` logs 0 on a CPU); with
``padding_free`` (the default) every forward of the rollouts (policy, value, reference, reward model) and of the PPO
epochs runs on the real tokens only, packed (:func:`rlhf_kit.ppo.core.forward_padding_free`,
:func:`~rlhf_kit.ppo.core.score_padding_free`: the same losses within float rounding, a policy entropy statistic
over real tokens).
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from rlhf_kit.core import work
from rlhf_kit.ppo.core import (
    INVALID_LOGPROB,
    first_true_indices,
    forward,
    forward_padding_free,
    get_reward,
    masked_mean,
    masked_whiten,
    score_padding_free,
    selective_log_softmax,
    truncate_response,
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


class PromptOrder:
    """Endless batches of prompts, each a shuffled pass over the dataset cut into global batches (the last partial
    one dropped), each process taking its slice of every global batch. The shuffle of pass p is drawn from
    ``seed + p`` alone, and every batch is left-padded to its *global* batch's longest prompt, so the rollouts of a
    global batch are the same on any number of processes; the position (pass, batch) is the whole state."""

    def __init__(self, dataset, tokenizer, seed: int, global_batch: int, process_index: int, num_processes: int):
        self.ids = [list(ids) for ids in dataset["input_ids"]]  # plain lists: a datasets column indexes slowly
        self.tokenizer, self.seed = tokenizer, seed
        self.global_batch, self.local = global_batch, global_batch // num_processes
        self.rank = process_index
        self.batches_per_pass = len(self.ids) // global_batch
        if self.batches_per_pass == 0:
            from rlhf_kit.core.errors import UserError

            raise UserError(f"{len(self.ids)} prompts cannot fill one PPO batch of {global_batch}; lower the batch "
                            "size (per_device_train_batch_size x gradient_accumulation_steps x processes)")
        self.pass_index, self.position, self._order = 0, 0, None

    def _pass_order(self) -> list[int]:
        if self._order is None:
            generator = torch.Generator().manual_seed(self.seed + self.pass_index)
            self._order = torch.randperm(len(self.ids), generator=generator).tolist()
        return self._order

    def __next__(self) -> dict:
        """This process's batch: ``input_ids`` (left-padded to the global batch's longest prompt) and ``index``,
        each row's position among all rollouts of the run so far (the seed of its sampling)."""
        if self.position == self.batches_per_pass:
            self.pass_index, self.position, self._order = self.pass_index + 1, 0, None
        start = self.position * self.global_batch
        rows = self._pass_order()[start: start + self.global_batch]
        width = max(len(self.ids[i]) for i in rows)
        mine = rows[self.rank * self.local: (self.rank + 1) * self.local]
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(self.ids[i])) + self.ids[i] for i in mine])
        first = (self.pass_index * self.batches_per_pass + self.position) * self.global_batch + self.rank * self.local
        self.position += 1
        return {"input_ids": input_ids, "index": list(range(first, first + len(mine)))}

    def state_dict(self) -> dict:
        return {"pass": self.pass_index, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.pass_index, self.position, self._order = state["pass"], state["position"], None


class TRLPromptBatches:
    """TRL 1.12's prompt order, for the oracle replay only: ``while True: yield from dataloader`` over a shuffled
    ``DataLoader`` (prepared by Accelerate), with a position that can be saved and restored: the RNG state when the
    current pass began (the shuffle is drawn from it) and how many batches of that pass were taken."""

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


@dataclass
class PPOState:
    """Counters and the log of a PPO run (what a checkpoint restores)."""

    global_step: int = 0  # PPO updates done
    episode: int = 0  # responses sampled
    epoch: float = 0.0  # passes over the prompts
    max_steps: int = 0
    logging_steps: int | None = None
    save_steps: int | None = None
    log_history: list = field(default_factory=list)
    selected_update: int | None = None  # select_checkpoint: judge -- the update whose policy the stage keeps
    stopped_update: int | None = None  # probe_patience -- the update after which over-optimisation stopped PPO


class PolicyAndValue(torch.nn.Module):
    """Policy and value model as one module, so one ``accelerator.prepare`` (and one DDP wrapper) holds both
    (MOSS-RLHF's wrapper, as TRL's). ``forward`` returns (policy output, per-position values)."""

    def __init__(self, policy, value_model):
        super().__init__()
        self.policy, self.value_model = policy, value_model

    @property
    def critic_backbone(self):
        """The value model's transformer without its head (a property, not a second registration of the same
        module: that made every checkpoint save warn about "shared tensors", listing the whole critic)."""
        return getattr(self.value_model, self.value_model.base_model_prefix)

    def forward(self, value: bool = True, logits_to_keep: int | torch.Tensor = 0, **kwargs):
        if not value:  # the policy alone (the reference pass, PPO-ptx), still through the distributed wrapper
            return self.policy(logits_to_keep=logits_to_keep, **kwargs), None
        # Values where the logits are: the last logits_to_keep positions (0: all), or those columns (a tensor).
        output = self.critic_backbone(**kwargs)
        hidden = output.hidden_states[-1]
        hidden = hidden[:, logits_to_keep] if torch.is_tensor(logits_to_keep) else hidden[:, -logits_to_keep:]
        # The head's dtype: a LoRA value model trains its head in float32 over a trunk that may be bf16.
        score = self.value_model.score
        head = next(score.parameters(), None)  # none for a parameter-free head (the monitor test's stub)
        return self.policy(logits_to_keep=logits_to_keep, **kwargs), score(hidden if head is None
                                                                             else hidden.to(head.dtype))


def disable_dropout(model) -> None:
    """Dropout off: PPO's ratio compares two forwards of one policy, which dropout would make differ (Huang et al.
    2024, detail 11)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0


def cast_4bit_for_bf16(model) -> None:
    """QLoRA in bf16: norms in float32, embeddings and LM head in bf16 (TRL's ``peft_module_casting_to_bf16``)."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm) or "norm" in name:
            module.to(torch.float32)
        elif any(x in name for x in ("lm_head", "embed_tokens", "wte", "wpe")):
            if hasattr(module, "weight") and module.weight.dtype == torch.float32:
                module.to(torch.bfloat16)


def _exact_div(a: int, b: int, what: str) -> int:
    from rlhf_kit.core.errors import UserError

    if a % b:
        raise UserError(f"{what}: {a} is not divisible by {b}; change the batch sizes or num_mini_batches")
    return a // b


class PPOTrainer:
    """PPO of a causal LM against a frozen reward model. Keyword arguments beyond the models and data:

    - ``kl_controller``: :class:`FixedKLController` (default, beta = ``args.kl_coef``) or
      :class:`AdaptiveKLController`;
    - ``ptx_batches`` / ``ptx_coef``: PPO-ptx, a :class:`rlhf_kit.ppo.ptx.PtxBatches` and gamma;
    - ``checkpointer``: a :class:`rlhf_kit.ppo.checkpoint.PPOCheckpointer` (save every ``save_steps`` updates,
      resume from the last complete checkpoint);
    - ``sampler``: ``rlhf_kit`` (``rlhf_kit/sampling/generation.py``) or ``trl`` (TRL 1.12's ``batch_generation`` over
      ``model.generate``, kept only so the oracle test can replay TRL's draws);
    - ``monitor``: a :class:`rlhf_kit.ppo.monitor.ProbeMonitor` (judge-scored probes every few updates, the
      over-optimisation warning, ``select_checkpoint: judge``).
    """

    def __init__(self, args, processing_class, model, ref_model, reward_model, value_model, train_dataset,
                 eval_dataset=None, peft_config=None, kl_controller=None, ptx_batches=None, ptx_coef: float = 0.0,
                 checkpointer=None, sampler: str = "rlhf_kit", monitor=None):
        from accelerate import Accelerator
        from peft import PeftModel, get_peft_model
        from torch.utils.data import DataLoader
        from transformers import DataCollatorWithPadding

        if ref_model is not None and ref_model is model:
            raise ValueError("model and ref_model must be different objects (pass None with LoRA)")
        if sampler not in ("rlhf_kit", "trl"):
            raise ValueError(f"unknown sampler {sampler!r}; use rlhf_kit or trl")
        self.args, self.processing_class, self.sampler, self.monitor = args, processing_class, sampler, monitor
        tok = processing_class
        if args.stop_token == "eos":
            self.stop_token_id = tok.eos_token_id
        elif args.stop_token:
            raise ValueError(f"unknown stop_token {args.stop_token!r}; use eos, or stop_token_id")
        else:
            self.stop_token_id = args.stop_token_id  # None: responses run to response_length
        model.generation_config.eos_token_id = self.stop_token_id
        if peft_config is not None:
            if isinstance(model, PeftModel):
                raise ValueError("the policy already has a LoRA adapter; merge it, or pass no peft_config")
            model = get_peft_model(model, peft_config)
            if args.bf16 and getattr(model, "is_loaded_in_4bit", False):
                cast_4bit_for_bf16(model)
        self.is_peft_model = isinstance(model, PeftModel)
        if ref_model is None and not self.is_peft_model:
            import copy

            ref_model = copy.deepcopy(model).eval().requires_grad_(False)  # a frozen copy of the starting policy
        self.ref_model, self.reward_model = ref_model, reward_model
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.train_dataset_len = len(train_dataset)

        # Batch sizes, as TRL 1.12 derives them: a batch is every process's local batch of rollouts; each PPO epoch
        # splits it into num_mini_batches minibatches of micro-batches (gradient accumulation inside a minibatch).
        if args.total_episodes is None:
            args.total_episodes = int(args.num_train_epochs * self.train_dataset_len)
        log_with = [r for r in (args.report_to or []) if r not in ("none", "all")]
        self.accelerator = acc = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                                             log_with=log_with or None, project_dir=args.output_dir)
        if log_with:  # report_to: tensorboard & co., under <output_dir>/ppo
            acc.init_trackers("ppo")
        args.local_batch_size = args.per_device_train_batch_size * args.gradient_accumulation_steps
        args.micro_batch_size = args.per_device_train_batch_size * acc.num_processes
        args.batch_size = args.local_batch_size * acc.num_processes
        args.mini_batch_size = _exact_div(args.batch_size, args.num_mini_batches, "batch size / num_mini_batches")
        args.local_mini_batch_size = _exact_div(args.local_batch_size, args.num_mini_batches,
                                                "per-process batch / num_mini_batches")
        if args.local_mini_batch_size > args.per_device_train_batch_size:  # smaller: one micro-batch (as TRL 1.12)
            _exact_div(args.local_mini_batch_size, args.per_device_train_batch_size,
                       "per-process minibatch / per_device_train_batch_size")
        if args.whiten_rewards and args.local_mini_batch_size < 8:
            raise ValueError(f"whiten_rewards needs per-process minibatches of 8 or more, got "
                             f"{args.local_mini_batch_size}")
        args.num_total_batches = math.ceil(args.total_episodes / args.batch_size)  # may exceed total_episodes
        self.local_seed = args.seed + acc.process_index * 100003  # one stream per process (a prime apart)
        if args.num_sample_generations > 0:
            self.sample_generations_freq = max(1, args.num_total_batches // args.num_sample_generations)

        for module in (model, ref_model, value_model, reward_model):
            if module is not None:
                disable_dropout(module)
        self.model = PolicyAndValue(model, value_model)
        self.optimizer, self.lr_scheduler = self._build_optimizer(self.model)
        self.state = PPOState()
        if acc.is_main_process:
            os.makedirs(args.output_dir, exist_ok=True)
        if self.sampler == "trl":  # TRL's prompt order too: a shuffled DataLoader that Accelerate prepares
            dataloader = DataLoader(train_dataset, batch_size=args.local_batch_size, shuffle=True,
                                    collate_fn=DataCollatorWithPadding(tok), drop_last=True)
            torch.manual_seed(args.seed)  # one shuffle on every process (the same seed before prepare)
            self.model, self.optimizer, dataloader = acc.prepare(self.model, self.optimizer, dataloader)
            self.prompt_batches = TRLPromptBatches(dataloader, getattr(dataloader, "synchronized_generator", None))
        else:
            plugin = getattr(acc.state, "deepspeed_plugin", None)
            if plugin is not None:  # DeepSpeed reads the micro-batch off a prepared dataloader; PPO prepares none
                plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = args.per_device_train_batch_size
            self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
            self.prompt_batches = PromptOrder(train_dataset, tok, args.seed, args.batch_size, acc.process_index,
                                              acc.num_processes)
        torch.manual_seed(self.local_seed)
        self.unwrapped = acc.unwrap_model(self.model)  # the policy+value module inside any distributed wrapper
        for frozen in (self.ref_model, self.reward_model):
            if frozen is not None:
                frozen.to(acc.device)
        self.kl_controller = kl_controller or FixedKLController(args.kl_coef)
        # Saved and restored by accelerator.save_state / load_state (rlhf_kit/ppo/checkpoint.py); the prompt order
        # is the same on every process except in the TRL replay, whose per-process position checkpoint.py keeps.
        acc.register_for_checkpointing(self.lr_scheduler, self.kl_controller)
        self.ptx_batches, self.ptx_coef, self.checkpointer = ptx_batches, ptx_coef, checkpointer
        self.timings = {"generate": 0.0, "rollout": 0.0}  # seconds spent sampling, and in the whole rollout phase

    def _build_optimizer(self, model):
        """AdamW (``optim``) over the trainable weights, weight decay off for biases and norms, and the
        ``lr_scheduler_type`` schedule over the updates: transformers' Trainer's choices, from the same keys."""
        from transformers import Trainer, get_scheduler
        from transformers.trainer_pt_utils import get_parameter_names

        args = self.args
        forbidden = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
        decay = set(get_parameter_names(model, [torch.nn.LayerNorm], forbidden))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in named if n in decay], "weight_decay": args.weight_decay},
                  {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        optimizer = optimizer_cls(groups, **optimizer_kwargs)
        steps = args.num_total_batches  # the scheduler steps once per PPO update
        scheduler = get_scheduler(args.lr_scheduler_type, optimizer=optimizer,
                                  num_warmup_steps=args.get_warmup_steps(steps), num_training_steps=steps,
                                  scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        return optimizer, scheduler

    @property
    def policy(self):
        """The policy (a PeftModel with LoRA), outside any distributed wrapper."""
        return self.unwrapped.policy

    def full_policy_state_dict(self) -> dict | None:
        """The policy's whole weights gathered from a sharded run (FSDP2, ZeRO-3), on the main process, under the
        policy's own key names; None when the weights are not sharded. A collective: every process calls it."""
        from rlhf_kit.integrations.training import gather_full_state_dict

        full = gather_full_state_dict(self.accelerator, self.model)
        if full is None or not self.accelerator.is_main_process:
            return None
        return {k[len("policy."):]: v for k, v in full.items() if k.startswith("policy.")}

    @contextmanager
    def reference(self):
        """The reference policy pi_SFT: a separate frozen model, or the policy with its LoRA adapter disabled
        (called through the distributed wrapper, whose sharded weights its forward gathers)."""
        if self.ref_model is not None:
            yield self.ref_model
        else:
            with self.policy.disable_adapter():
                yield lambda **kwargs: self.model(value=False, **kwargs)[0]

    def log(self, metrics: dict) -> None:
        """Append one update's metrics to the log history (with epoch and step) and send them to the trackers."""
        self.state.log_history.append({**metrics, "epoch": self.state.epoch, "step": self.state.global_step})
        if self.accelerator.trackers:
            self.accelerator.log(metrics, step=self.state.global_step)

    # --- one update, step by step -------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, queries: torch.Tensor, index: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(query_responses, generate's logits or None): one response per left-padded query, right-padded with the
        pad token after its stop token (or up to ``response_length``)."""
        from rlhf_kit.ppo.rollout import generate_like_trl, sample_rollouts

        args, tok = self.args, self.processing_class
        with self.unwrapped_for_sampling() as model:
            policy = model.policy
            if self.sampler == "trl":
                return generate_like_trl(policy, queries, args.local_rollout_forward_batch_size, tok.pad_token_id,
                                         args.response_length, args.temperature)
            seeds = [args.seed * 1_000_003 + i for i in index]  # the i-th rollout of the run draws alike anywhere
            responses = sample_rollouts(policy, tok, queries, args.response_length, args.temperature,
                                        args.local_rollout_forward_batch_size, self.stop_token_id, seeds)
            policy.train(self.model.training)  # the sampler switches to eval mode; dropout is off either way
        return torch.cat((queries, responses), 1), None

    @contextmanager
    def unwrapped_for_sampling(self):
        """The policy+value module outside its distributed wrapper, with whole weights, for sampling token by
        token: under ZeRO-3 the parameters gathered and DeepSpeed's fetch hooks lifted meanwhile (as TRL's
        ``unwrap_model_for_generation``), under FSDP2 every sharded module unsharded and kept so until the end."""
        from rlhf_kit.ppo.sharding import whole_weights

        with whole_weights(self.model, self.accelerator):
            yield self.unwrapped

    def forward_rows(self, model, query_responses: torch.Tensor, context_length: int, read: torch.Tensor):
        """(logits, values or None) at each response position, ``[rows, response width, ...]``, of a policy (with
        the value head when ``model`` is the policy+value module): on the real tokens only where ``padding_free``
        allows (zeros where ``read`` is false), else TRL's padded forward."""
        pad = self.processing_class.pad_token_id
        if self.args.padding_free:
            packed = forward_padding_free(model, query_responses, pad, context_length, read)
            if packed is not None:
                return packed
        result = forward(model, query_responses, pad, context_length)
        output, values = result if isinstance(result, tuple) else (result, None)
        return output.logits[:, :-1], None if values is None else values[:, :-1]

    @torch.no_grad()
    def rollout(self, queries: torch.Tensor, index: list[int]) -> dict:
        """Sample responses from pi_RL and score them: log-probs under pi_RL and pi_SFT, values, RM scores; every
        process's rollouts gathered, so each holds the whole batch (``index``: the rollouts' seeds)."""
        args, tok = self.args, self.processing_class
        context_length, step = queries.shape[1], args.local_rollout_forward_batch_size
        started = time.perf_counter()
        query_responses, logitss = self.sample(queries, index)
        self.timings["generate"] += time.perf_counter() - started
        out = {k: [] for k in ("responses", "postprocessed", "logprobs", "ref_logprobs", "sequence_lengths",
                               "scores", "values")}
        for i in range(0, queries.shape[0], step):
            query, query_response = queries[i: i + step], query_responses[i: i + step]
            response = query_response[:, context_length:]
            # The reward model reads the response cut after the stop token (Huang et al. 2024, detail 4).
            postprocessed = response
            if self.stop_token_id is not None:
                postprocessed = truncate_response(self.stop_token_id, tok.pad_token_id, response)
            sequence_length = first_true_indices(postprocessed == tok.pad_token_id) - 1
            scored = torch.cat((query, postprocessed), 1)
            # padding_free: each pass below on the real tokens only, read where PPO reads them (~padding_mask_p1).
            read = torch.arange(response.shape[1], device=response.device)[None] <= (sequence_length + 1)[:, None]
            # One pass through the (distributed) policy+value module: log pi_RL of the sampled tokens and V(s_t).
            logits, values = self.forward_rows(self.model, query_response, context_length, read)
            if logitss is None:
                logprob = selective_log_softmax(logits / (args.temperature + 1e-7), response)
            else:  # TRL replay: log pi_RL from generate's scores, as TRL computed it
                logprob = selective_log_softmax(logitss[i: i + step], response)
            del logits
            with self.reference() as reference:  # LoRA: the policy with its adapter disabled
                ref_logits, _ = self.forward_rows(reference, query_response, context_length, read)
            ref_logits /= args.temperature + 1e-7
            ref_logprob = selective_log_softmax(ref_logits, response)
            score = None
            if args.padding_free:
                score = score_padding_free(self.reward_model, scored, tok.pad_token_id, context_length)
            if score is None:
                _, score, _ = get_reward(self.reward_model, scored, tok.pad_token_id, context_length)
            # policy, value, reference and reward model each read the rollouts (the RM up to the stop token)
            real = int((query_response != tok.pad_token_id).sum())
            work.count("scored", 3 * real + int((scored != tok.pad_token_id).sum()))
            for key, value in zip(out, (response, postprocessed, logprob, ref_logprob, sequence_length, score,
                                        values.squeeze(-1))):
                out[key].append(value)
        batch = {k: torch.cat(v, 0) for k, v in out.items()}
        batch["query_responses"] = query_responses
        batch = self._gather(batch)
        batch["context_length"] = context_length  # the same on every process (PromptOrder pads globally)
        # A response that never stops scores lower (Huang et al. 2024, detail 14: missing-EOS penalty).
        contains_eos = torch.any(batch["postprocessed"] == tok.eos_token_id, dim=-1)
        if args.missing_eos_penalty is not None:
            batch["scores"][~contains_eos] -= args.missing_eos_penalty
        # Positions after the response's end are padding: fixed log-probs there, and no value after end + 1.
        rows, width = batch["responses"].shape
        idxs = torch.arange(width, device=queries.device).repeat(rows, 1)
        batch["padding_mask"] = idxs > batch["sequence_lengths"].unsqueeze(1)
        batch["padding_mask_p1"] = idxs > (batch["sequence_lengths"] + 1).unsqueeze(1)
        for key in ("logprobs", "ref_logprobs"):
            batch[key] = torch.masked_fill(batch[key], batch["padding_mask"], INVALID_LOGPROB)
        batch["values"] = torch.masked_fill(batch["values"], batch["padding_mask_p1"], 0)
        self.timings["rollout"] += time.perf_counter() - started
        return batch

    def _gather(self, local: dict) -> dict:
        """Every process's rollouts, in process order (= the global batch's order), padded to one response width:
        advantages are whitened and minibatches drawn over the whole batch, as on one process."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return local
        pad = self.processing_class.pad_token_id
        fill = {"responses": pad, "postprocessed": pad, "query_responses": pad, "logprobs": INVALID_LOGPROB,
                "ref_logprobs": INVALID_LOGPROB, "values": 0}
        return {k: acc.gather(acc.pad_across_processes(v, dim=1, pad_index=fill[k]) if k in fill else v)
                for k, v in local.items()}

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
        query_responses, pad = b["query_responses"][inds], self.processing_class.pad_token_id
        work.count("trained", int((query_responses != pad).sum()))
        logits, vpred_temp = self.forward_rows(self.model, query_responses, ctx, ~padding_mask_p1)
        logits /= args.temperature + 1e-7
        new_logprobs = selective_log_softmax(logits, b["responses"][inds])
        new_logprobs = torch.masked_fill(new_logprobs, padding_mask, INVALID_LOGPROB)
        vpred = torch.masked_fill(vpred_temp.squeeze(-1), padding_mask_p1, 0)
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
                # TRL's mean counts padded positions too; padding-free has no logits there: real tokens only.
                "entropy": masked_mean(entropy, ~padding_mask) if args.padding_free else entropy.mean(),
                "ratio": ratio.mean(),
            }
        return loss, stats

    def ptx_loss(self) -> torch.Tensor:
        """Mean next-token NLL of the policy on one pretraining batch (PPO-ptx, InstructGPT Eq. 2)."""
        batch = self.ptx_batches.next_batch(self.accelerator.device)
        if self.accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):  # sharded weights: through the wrapper
            return self.model(value=False, **batch)[0].loss
        return self.policy(**batch).loss  # DDP allows one wrapped forward per backward: the PPO loss took it

    def ppo_epochs(self, b: dict) -> dict[str, torch.Tensor]:
        """``num_ppo_epochs`` passes over the batch, each in freshly shuffled minibatches of micro-batches."""
        args, acc = self.args, self.accelerator
        # One slot per micro-batch a minibatch has (TRL sized the last axis by gradient_accumulation_steps, which
        # leaves zeros in it when num_mini_batches > 1 and drags every averaged statistic towards 0).
        micro_batches = -(-args.local_mini_batch_size // args.per_device_train_batch_size)  # a smaller minibatch: 1
        shape = (args.num_ppo_epochs, args.num_mini_batches, micro_batches)
        names = ["approx_kl", "clipfrac", "policy", "value", "value_clipfrac", "entropy", "ratio"]
        stats = {k: torch.zeros(shape, device=acc.device) for k in names + (["ptx"] if self.ptx_coef else [])}
        # Minibatches are drawn over the whole (gathered) batch with one permutation on every process; process r
        # takes the r-th share of each minibatch's micro-batches, so the summed gradient is the one-process one.
        share = args.local_mini_batch_size * acc.process_index
        for epoch in range(args.num_ppo_epochs):
            b_inds = np.random.permutation(args.batch_size)
            if acc.num_processes > 1:
                from accelerate.utils import broadcast

                b_inds = broadcast(torch.as_tensor(b_inds, device=acc.device)).cpu().numpy()
            for minibatch, mb_start in enumerate(range(0, args.batch_size, args.mini_batch_size)):
                mb_inds = b_inds[mb_start + share: mb_start + share + args.local_mini_batch_size]
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
        """The update's metrics under rlhf_kit's names (see rlhf_kit/ppo/__init__.py): rollout figures over the
        whole batch (every process holds it), training figures over every process's micro-batches."""
        gather = self.accelerator.gather_for_metrics
        mean_kl = b["kl"].sum(1).mean()
        mean_entropy = ((-b["logprobs"]) * (~b["padding_mask"]).float()).sum(1).mean()
        mean_non_score_reward = b["non_score_reward"].sum(1).mean()
        rlhf_reward = mean_non_score_reward + b["scores"].mean()
        metrics = {
            "charts/episodes_per_second": episodes_per_second,
            "ppo/kl": mean_kl.item(),
            "ppo/entropy": mean_entropy.item(),
            "ppo/kl_penalty": mean_non_score_reward.item(),
            "ppo/rlhf_reward": rlhf_reward.item(),
            "ppo/scores": b["scores"].mean().item(),
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
        """Step counters, and the logging / saving periods in updates (a float below 1: a share of all updates)."""
        args, state = self.args, self.state
        state.global_step, state.episode = 0, 0
        state.max_steps = args.num_total_batches
        for name in ("logging_steps", "save_steps"):
            value = getattr(args, name)
            if value is not None:
                setattr(state, name, math.ceil(state.max_steps * value) if value < 1 else value)

    def train(self):
        """Run the remaining PPO updates (all of them, or those after the checkpoint resumed from)."""
        args, acc = self.args, self.accelerator
        self.model.train()
        self._init_state()
        first_update = 1 + (self.checkpointer.resume(self) if self.checkpointer else 0)
        start_time, start_episode = time.time(), self.state.episode
        if self.monitor is not None and self.state.global_step == 0:  # the starting policy: what PPO must beat
            self.log({**self.monitor.probe(self), "ppo/episode": 0})
        bar = self._progress_bar()
        for update in range(first_update, args.num_total_batches + 1):
            # Checked before an update, not after a probe: a run resumed past the stop's probe stops there too.
            if self.monitor is not None and self.monitor.stop_due(self.state.log_history):
                self.state.stopped_update = self.state.global_step
                acc.print(f"[ppo] probe_patience: {self.monitor.patience} probes in a row over-optimised; stopping "
                          f"after update {self.state.global_step} of {args.num_total_batches}")
                break
            self.state.episode += args.batch_size
            prompts = next(self.prompt_batches)
            batch = self.rollout(prompts["input_ids"].to(acc.device), prompts.get("index"))
            self.compute_rewards(batch)
            self.compute_advantages(batch)
            stats = self.ppo_epochs(batch)
            # Not TRL's int(): on a CPU PPO runs well under one episode per second, which int() logs as 0.
            eps = (self.state.episode - start_episode) / (time.time() - start_time)
            metrics = self.batch_metrics(batch, stats, eps)
            self.kl_controller.update(metrics["ppo/kl"], args.batch_size)  # same beta on every process
            self.state.epoch = self.state.episode / self.train_dataset_len
            self.state.global_step += 1
            checkpoint_due = bool(self.checkpointer and self.checkpointer.due(self.state))
            if self.monitor is not None and self.monitor.due(self.state, checkpoint_due):
                metrics.update(self.monitor.probe(self))
            self.log(metrics)
            self.lr_scheduler.step()
            if bar is not None:
                bar.set_postfix({k.split("/")[1]: f"{metrics[k]:.3g}" for k in ("ppo/scores", "ppo/kl")}, refresh=False)
                bar.update(args.batch_size)
            if checkpoint_due:
                self.checkpointer.save(self)
            del batch, stats
            if args.num_sample_generations > 0 and (update - 1) % self.sample_generations_freq == 0:
                self.print_samples()
        if bar is not None:
            bar.close()
        if self.monitor is not None and self.monitor.select == "judge":
            self.select_best_probed()
        for tracker in acc.trackers:  # not acc.end_training(): it ends the process group, still needed to save
            tracker.finish()

    def select_best_probed(self) -> None:
        """``select_checkpoint: judge``: of the complete checkpoints and the final policy, keep the one whose probe
        the judge scored best -- early stopping on held-out data, as ``load_best_model_at_end`` in transformers'
        Trainer; a kill before this point resumes and selects again, from the same log."""
        from rlhf_kit.ppo.checkpoint import complete_checkpoints
        from rlhf_kit.ppo.monitor import best_update

        state, saved = self.state, dict(complete_checkpoints(self.args.output_dir))
        best = best_update(state.log_history, set(saved) | {state.global_step})
        state.selected_update = best
        score = {r["step"]: r["probe/judge_score"] for r in state.log_history if "probe/judge_score" in r}
        self.accelerator.print(f"[ppo] select_checkpoint: judge keeps update {best} (probe judge score "
                               f"{score[best]:.3f}; the last update, {state.global_step}: "
                               f"{score[state.global_step]:.3f})")
        if best != state.global_step:
            self.accelerator.load_state(str(saved[best] / "accelerate"))  # the policy+value module as saved then

    @torch.no_grad()
    def print_samples(self, n: int = 4) -> None:
        """A few near-greedy responses (temperature 0.01, as TRL's sample generations) to the first held-out
        prompts, printed by the main process: a look at what the policy writes during training."""
        from rlhf_kit.sampling.generation import sample_ids

        if not self.eval_dataset:
            return
        tok, ids = self.processing_class, self.eval_dataset["input_ids"][:n]
        with self.unwrapped_for_sampling() as model:
            sampled = sample_ids(model.policy, tok, ids, 1, 0.01, self.args.response_length,
                                 end_token_id=self.stop_token_id)
            model.policy.train(self.model.training)
        if not self.accelerator.is_main_process:
            return
        for prompt, (response,) in zip(ids, sampled):
            print(f"[ppo] update {self.state.global_step}: {tok.decode(prompt, skip_special_tokens=True)!r} -> "
                  f"{tok.decode(response, skip_special_tokens=True)!r}")

    def _progress_bar(self):
        """Episodes done / total, with episodes per second and the time left (main process only)."""
        if self.args.disable_tqdm or not self.accelerator.is_main_process:
            return None
        from tqdm.auto import tqdm

        total = self.args.num_total_batches * self.args.batch_size
        return tqdm(total=total, initial=self.state.episode, unit="episode", desc="ppo", dynamic_ncols=True)
