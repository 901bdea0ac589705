"""Sampling responses from a policy for a batch of chat prompts (comparison collection and evaluation)."""

from __future__ import annotations


def sample_responses(model, tokenizer, prompts: list[list[dict]], k: int = 1, temperature: float = 1.0,
                     max_new_tokens: int = 32, batch_size: int = 64, seed: int = 0) -> list[list[str]]:
    """``k`` sampled responses per prompt (a list of messages), decoded without special tokens."""
    import torch

    from rlhf_kit.data import chat_ids

    torch.manual_seed(seed)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues from the right end
    model.eval()
    out: list[list[str]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            ids = [chat_ids(tokenizer, p, add_generation_prompt=True) for p in prompts[start : start + batch_size]]
            batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(model.device)
            with torch.no_grad():
                generated = model.generate(
                    **batch,
                    do_sample=True,
                    temperature=temperature,
                    top_k=0,
                    top_p=1.0,
                    num_return_sequences=k,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            texts = tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            texts = [t.strip() for t in texts]
            out.extend(texts[i : i + k] for i in range(0, len(texts), k))
    finally:
        tokenizer.padding_side = side
    return out
