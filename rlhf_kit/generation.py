"""Sampling responses from a policy for a batch of chat prompts (comparison collection and evaluation)."""

from __future__ import annotations


def sample_responses(model, tokenizer, prompts: list[list[dict]], k: int = 1, temperature: float = 1.0,
                     max_new_tokens: int = 32, batch_size: int = 64, seed: int = 0, finished: list | None = None
                     ) -> list[list[str]]:
    """``k`` sampled responses per prompt (a list of messages), decoded without special tokens.

    ``finished``: a list to extend with, per prompt, whether each response ended with the end token (False: cut
    off at ``max_new_tokens``)."""
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
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            texts = [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            out.extend(texts[i : i + k] for i in range(0, len(texts), k))
            if finished is not None:
                ended = (new_tokens == tokenizer.eos_token_id).any(dim=1).tolist()
                finished.extend(ended[i : i + k] for i in range(0, len(ended), k))
    finally:
        tokenizer.padding_side = side
    return out
