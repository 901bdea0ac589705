"""PPO's padding-free forwards (rlhf_kit/ppo/core.py): the padded forward's logits, values and gradients where the
losses read them, and the reward model's scores, from fewer rows; a row it cannot pack falls back to the padded
forward."""

from __future__ import annotations

import pytest
import torch
from ppo_golden import LORA, build_inputs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import peft
    import transformers

    from rlhf_kit.ppo.trainer import PolicyAndValue

    transformers.set_seed(0)
    inputs = build_inputs(tmp_path_factory.mktemp("inputs"))
    policy = peft.get_peft_model(inputs["policy"], peft.LoraConfig(**LORA))
    with torch.no_grad():  # a LoRA that changes the outputs (B starts at zero)
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return PolicyAndValue(policy, inputs["value_model"]), inputs["tokenizer"]


def rows(tokenizer, response_width: int = 6):
    """Left-padded prompts of 2-5 tokens and right-padded responses: stopped after 0, 2 and 3 tokens, one run to the
    full width, one stopped at its last token; (query_responses, context_length, sequence_lengths)."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    prompts = [[5, 6], [7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18], [19, 20, 21]]
    responses = [[eos], [30, 31, eos], [32, 33, 34, eos], [35, 36, 37, 38, 39, 40], [41, 42, 43, 44, 45, eos]]
    context = max(map(len, prompts))
    qr = torch.tensor([[pad] * (context - len(p)) + p + r + [pad] * (response_width - len(r))
                       for p, r in zip(prompts, responses)])
    sequence_lengths = torch.tensor([len(r) - 1 for r in responses])
    return qr, context, sequence_lengths


def read_positions(sequence_lengths, width: int) -> torch.Tensor:
    """Where PPO's losses read logits and values: t <= sequence length + 1 (the rollout's ~padding_mask_p1)."""
    return torch.arange(width)[None] <= (sequence_lengths + 1)[:, None]


def test_padding_free_matches_the_padded_forward_and_its_gradients(setup):
    from rlhf_kit.ppo.core import forward, forward_padding_free

    model, tokenizer = setup
    qr, context, lengths = rows(tokenizer)
    read = read_positions(lengths, qr.shape[1] - context)
    seen = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_ids"].shape),
                                           with_kwargs=True)
    try:
        output, values = forward(model, qr, tokenizer.pad_token_id, context)
        padded_logits, padded_values = output.logits[:, :-1], values[:, :-1]
        packed_logits, packed_values = forward_padding_free(model, qr, tokenizer.pad_token_id, context, read)
    finally:
        hook.remove()
    assert seen[1][0] < seen[0][0] == qr.shape[0] and seen[1][1] == qr.shape[1]  # fewer rows, same width
    assert not read.all()  # some positions are padding, and are skipped
    torch.testing.assert_close(packed_logits[read], padded_logits[read], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed_values[read], padded_values[read], rtol=1e-5, atol=1e-5)
    assert (packed_logits[~read] == 0).all()

    def grads(logits, values):
        model.zero_grad()
        # A loss of the read positions only, as PPO's: every LoRA and value weight gets the same gradient.
        (logits[read].log_softmax(-1)[..., 3].sum() + values[read].square().sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    padded = grads(padded_logits, padded_values)
    packed = grads(packed_logits, packed_values)
    assert padded.keys() == packed.keys() and any("lora_A" in n for n in padded)
    for name in padded:
        torch.testing.assert_close(packed[name], padded[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_pad_token_inside_a_row_falls_back_to_the_padded_forward(setup):
    from rlhf_kit.ppo.core import forward_padding_free

    model, tokenizer = setup
    qr, context, lengths = rows(tokenizer)
    qr[3, context + 2] = tokenizer.pad_token_id  # sampled mid-response: the padded forward masks it
    read = read_positions(lengths, qr.shape[1] - context)
    assert forward_padding_free(model, qr, tokenizer.pad_token_id, context, read) is None


def test_the_reference_pass_packs_too_and_has_no_values(setup):
    from rlhf_kit.ppo.core import forward, forward_padding_free

    model, tokenizer = setup
    qr, context, lengths = rows(tokenizer)
    read = read_positions(lengths, qr.shape[1] - context)
    reference = model.policy  # a plain causal LM: one output, no values (the rollout's reference pass)
    with torch.no_grad():
        padded = forward(reference, qr, tokenizer.pad_token_id, context).logits[:, :-1]
        packed, values = forward_padding_free(reference, qr, tokenizer.pad_token_id, context, read)
    assert values is None
    torch.testing.assert_close(packed[read], padded[read], rtol=1e-5, atol=1e-5)


def test_the_reward_models_score_packed_is_its_padded_score(setup):
    from rlhf_kit.ppo.core import get_reward, score_padding_free

    model, tokenizer = setup
    qr, context, _ = rows(tokenizer)
    qr[0, context:] = tokenizer.pad_token_id  # an empty response: scored at the prompt's last token
    reward_model = model.value_model  # a backbone with a scalar score head, as the reward model
    seen = []
    backbone = getattr(reward_model, reward_model.base_model_prefix)
    hook = backbone.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_ids"].shape),
                                              with_kwargs=True)
    try:
        with torch.no_grad():
            _, padded, _ = get_reward(reward_model, qr, tokenizer.pad_token_id, context)
            packed = score_padding_free(reward_model, qr, tokenizer.pad_token_id, context)
    finally:
        hook.remove()
    assert seen[1][0] < seen[0][0] == qr.shape[0]  # fewer rows
    assert packed.shape == padded.shape == (qr.shape[0],) and padded.abs().min() > 0
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-6)
    qr[3, context + 2] = tokenizer.pad_token_id  # a pad mid-response: both score the token before it
    with torch.no_grad():
        torch.testing.assert_close(score_padding_free(reward_model, qr, tokenizer.pad_token_id, context),
                                   get_reward(reward_model, qr, tokenizer.pad_token_id, context)[1],
                                   rtol=1e-5, atol=1e-6)
    qr[1, 2] = tokenizer.pad_token_id  # a pad inside a prompt: get_reward's to score
    assert score_padding_free(reward_model, qr, tokenizer.pad_token_id, context) is None
