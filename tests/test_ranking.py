"""K-wise reward loss: equals the mean pairwise loss, reduces to pairwise at K = 2, trains head and adapters;
the collator handles ragged K, ties and duplicates; bad rankings are dropped and counted."""

import math

import pytest
import torch
from datasets import Dataset

from rlhf_kit.core.errors import UserError
from rlhf_kit.data.rows import select_responses
from rlhf_kit.reward.ranking import (
    RankingCollator,
    build_ranking_dataset,
    dedupe_ranking,
    kwise_loss,
    spread_over_ranks,
)


def _pair_loss(a, b):
    return -math.log(1 / (1 + math.exp(-(a - b))))


def test_kwise_loss_is_mean_of_pairwise_losses_per_prompt_then_over_prompts():
    # prompt 0: ranks 0 < 1 < 2 with rewards 1.0, 0.5, -1.0 -> 3 pairs; prompt 1: a tie and one pair
    rewards = torch.tensor([1.0, 0.5, -1.0, 0.2, 0.2, 0.7])
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    ranks = torch.tensor([0, 1, 2, 0, 0, 1])
    loss, correct, pairs = kwise_loss(rewards, group, ranks)
    p0 = (_pair_loss(1.0, 0.5) + _pair_loss(1.0, -1.0) + _pair_loss(0.5, -1.0)) / 3
    p1 = (_pair_loss(0.2, 0.7) + _pair_loss(0.2, 0.7)) / 2  # the tie (ranks 0, 0) makes no pair
    assert loss.item() == pytest.approx((p0 + p1) / 2, rel=1e-6)
    assert correct.tolist() == [3.0, 0.0] and pairs.tolist() == [3.0, 2.0]  # per prompt: pooled accuracy 3 / 5


def test_k2_reduces_to_the_pairwise_loss():
    chosen, rejected = torch.tensor([0.3, -0.2, 1.5]), torch.tensor([0.1, 0.4, -0.5])
    pairwise = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
    rewards = torch.stack([chosen, rejected], 1).reshape(-1)
    loss, _, _ = kwise_loss(rewards, torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1] * 3))
    assert loss.item() == pytest.approx(pairwise.item(), rel=1e-6)


def test_weights_reproduce_duplicated_responses():
    # responses A (rank 0) twice and B (rank 1): expanded pairs are (A, B) twice -> same as one (A, B) pair
    full, _, _ = kwise_loss(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0, 0, 0]), torch.tensor([0, 0, 1]))
    deduped, _, _ = kwise_loss(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), torch.tensor([0, 1]),
                               weights=torch.tensor([2.0, 1.0]))
    assert deduped.item() == pytest.approx(full.item())
    # with a third response C (rank 2): weights make A-C count twice, as in the expansion
    full, _, _ = kwise_loss(torch.tensor([1.0, 1.0, 0.0, -1.0]), torch.tensor([0] * 4), torch.tensor([0, 0, 1, 2]))
    deduped, _, _ = kwise_loss(torch.tensor([1.0, 0.0, -1.0]), torch.tensor([0] * 3), torch.tensor([0, 1, 2]),
                               weights=torch.tensor([2.0, 1.0, 1.0]))
    assert deduped.item() == pytest.approx(full.item())


def test_margins_shift_the_difference():
    loss, _, _ = kwise_loss(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), torch.tensor([0, 1]),
                            margins=torch.tensor([0.5, 0.0]))
    assert loss.item() == pytest.approx(_pair_loss(0.5, 0.0))


def test_collator_packs_each_ranking_behind_its_shared_prompt():
    collate = RankingCollator(pad_token_id=0)
    batch = collate([
        {"completion_ids": [[5, 6, 7], [5, 8]], "ranks": [0, 1], "weights": [1.0, 1.0]},
        {"completion_ids": [[5, 9], [5, 9, 9, 9], [5, 3, 3]], "ranks": [1, 0, 1], "weights": [1.0, 2.0, 1.0]},
    ])
    # Row 0: 5 | 6 7 | 8; row 1: 5 | 9 | 9 9 9 | 3 3 (the shared prefix is every completion's first token only).
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 0, 0, 0], [5, 9, 9, 9, 9, 3, 3]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 1, 0, 0, 0], [0, 1, 1, 2, 3, 1, 2]]
    assert batch["score_at"].tolist() == [2, 3, 7 + 1, 7 + 4, 7 + 6]  # each completion's last token, flat
    assert batch["num_tokens"].item() == 4 + 7
    assert batch["group"].tolist() == [0, 0, 1, 1, 1]
    assert batch["ranks"].tolist() == [0, 1, 1, 0, 1]
    assert batch["weights"].tolist() == [1.0, 1.0, 1.0, 2.0, 1.0]
    sees = batch["attention_mask"][1, 0]
    assert sees[4].tolist() == [True, False, True, True, True, False, False]  # the shared token and its own
    assert sees[6].tolist() == [True, False, False, False, False, True, True]


def _tiny_reward_model(attn_implementation="sdpa", **sizes):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(**{"vocab_size": 20, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                            "num_attention_heads": 4, "num_key_value_heads": 2, **sizes}, num_labels=1,
                         pad_token_id=0, attn_implementation=attn_implementation)
    torch.manual_seed(0)
    return LlamaForSequenceClassification(config)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_rankings_give_each_completion_its_own_reward_and_gradient(attn_implementation):
    """Each completion's reward from the packed rows equals its own forward alone, and so does the loss's gradient:
    the shared prompt is computed once, nothing else changes."""
    from rlhf_kit.reward.ranking import completion_rewards

    model = _tiny_reward_model(attn_implementation)
    rankings = [{"completion_ids": [[3, 4, 5, 6], [3, 4, 7], [3, 4, 5, 8, 9, 9]], "ranks": [0, 1, 2],
                 "weights": [1.0, 1.0, 1.0]},
                {"completion_ids": [[5, 6], [5, 6, 7, 1], [7]], "ranks": [1, 0, 1], "weights": [1.0, 2.0, 1.0]}]
    batch = RankingCollator(0)(rankings)

    def loss_and_grads(rewards):
        model.zero_grad()
        loss, _, _ = kwise_loss(rewards, batch["group"], batch["ranks"], batch["weights"])
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    packed = completion_rewards(model, batch)
    alone = torch.cat([model(input_ids=torch.tensor([c])).logits.squeeze(-1)
                       for r in rankings for c in r["completion_ids"]])
    assert len(set(alone.tolist())) == len(alone)  # distinct rewards: a mix-up would show
    assert packed.tolist() == pytest.approx(alone.tolist(), abs=1e-6)
    (loss, grads), (loss_alone, grads_alone) = loss_and_grads(packed), loss_and_grads(alone)
    assert loss == pytest.approx(loss_alone, abs=1e-6)
    assert all(torch.allclose(g, h, atol=1e-6) for g, h in zip(grads, grads_alone))


def test_an_attention_without_custom_masks_is_refused_in_one_line():
    from rlhf_kit.integrations.modeling import attention_mask_for

    config = _tiny_reward_model().config
    config._attn_implementation = "flash_attention_2"
    with pytest.raises(UserError, match="attn_implementation flash_attention_2 takes no custom attention mask.*sdpa"):
        attention_mask_for(config, torch.ones(1, 1, 2, 2, dtype=torch.bool))


def test_dedupe_and_limit_k():
    d = dedupe_ranking(["a", "b", "a", "c"], [0, 1, 0, 2])
    assert d["responses"] == ["a", "b", "c"] and d["ranks"] == [0, 1, 2] and d["weights"] == [2.0, 1.0, 1.0]
    keep = spread_over_ranks([7, 6, 5, 4, 3, 2, 1, 0], 3)
    ranks = [[7, 6, 5, 4, 3, 2, 1, 0][i] for i in keep]
    row = {"responses": list("abcdefgh"), "ranks": [7, 6, 5, 4, 3, 2, 1, 0], "scores": list(range(8)), "labeler": "x"}
    cut = select_responses(row, keep)
    assert cut["responses"] == [row["responses"][i] for i in keep] and cut["scores"] == keep  # scores stay aligned
    assert sorted(ranks) == [0, 3, 7] or sorted(ranks) == [0, 4, 7]
    assert 0 in ranks and 7 in ranks  # the best and the worst survive


def test_gradients_reach_score_head_and_adapters():
    from peft import LoraConfig, get_peft_model

    from rlhf_kit.reward.ranking import completion_rewards

    model = get_peft_model(_tiny_reward_model(num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2),
                           LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["q_proj", "v_proj"]))
    batch = RankingCollator(0)([{"completion_ids": [[3, 4, 5], [3, 6], [3, 7, 8, 9]], "ranks": [0, 1, 2],
                                 "weights": [1.0, 1.0, 1.0]}])
    loss, _, _ = kwise_loss(completion_rewards(model, batch), batch["group"], batch["ranks"])
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any("score" in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())
    assert any("lora_B" in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())


def _tok():
    from rlhf_kit.worlds.demo import tiny, world

    return tiny.build_tiny_tokenizer(world.vocabulary())


def test_bad_rankings_are_dropped_and_counted(capsys):
    prompt = [{"role": "user", "content": "name two animals"}]
    ds = Dataset.from_list([
        {"prompt": prompt, "responses": ["cat , dog", "cat"], "ranks": [0, 1]},
        {"prompt": prompt, "responses": ["cat", "dog"], "ranks": [0, 0]},
        {"prompt": prompt, "responses": ["cat", ""], "ranks": [0, 1]},
    ])
    kept = build_ranking_dataset(ds, _tok(), None, "x.jsonl")
    assert len(kept) == 1
    out = capsys.readouterr().out
    assert "removed 1 empty responses" in out and "2 fewer than two distinct ranks" in out


def test_k_beyond_max_is_truncated_and_said(capsys):
    prompt = [{"role": "user", "content": "name two animals"}]
    ds = Dataset.from_list([{"prompt": prompt, "responses": ["cat", "dog", "cow", "pig", "fish"],
                             "ranks": [0, 1, 2, 3, 4]}])
    kept = build_ranking_dataset(ds, _tok(), None, "x.jsonl", k_max=3)
    assert len(kept[0]["responses"]) == 3 and kept[0]["ranks"][0] == 0 and kept[0]["ranks"][-1] == 4
    assert "more than k_max=3" in capsys.readouterr().out


def test_kwise_on_pairs_only_dataset_names_it():
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": "q"}],
                             "chosen": [{"role": "assistant", "content": "a"}],
                             "rejected": [{"role": "assistant", "content": "b"}]}])
    with pytest.raises(UserError, match="kwise needs ranked responses .* but pairs.jsonl has prompt, chosen, rejected"):
        build_ranking_dataset(ds, _tok(), None, "pairs.jsonl")
