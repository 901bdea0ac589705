"""The embedded tiny default checkpoint of the demo world: a word-level chat tokenizer and a small Llama.

Built locally (no Hub), so ``make demo`` runs offline; saved with ``save_pretrained`` by the demo's base stage and
loaded by every later stage with a plain ``from_pretrained``, exactly as a real checkpoint would be.
"""

from __future__ import annotations

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"

ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
# `{% generation %}` marks the assistant tokens, so SFT trains on them only (InstructGPT's SFT fits the labelers'
# demonstrations, not the prompts); the end-of-turn token is inside the block so the model learns to stop.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|assistant|> {% generation %}{{ message['content'] }} <eos>{% endgeneration %} "
    "{%- else -%}"
    "<|{{ message['role'] }}|> {{ message['content'] }} "
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|> {% endif -%}"
)


def build_tiny_tokenizer(words: list[str]):
    """A word-level tokenizer over ``words`` with pad/unk/eos, role tokens and the chat template above."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, UNK, EOS, *ROLE_TOKENS]
    vocab = {tok: i for i, tok in enumerate(specials + [w for w in words if w not in specials])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, unk_token=UNK, eos_token=EOS, additional_special_tokens=ROLE_TOKENS
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.clean_up_tokenization_spaces = False  # decode "cat , dog" as written, not "cat, dog"
    return tokenizer


def build_tiny_model(tokenizer, hidden_size: int, intermediate_size: int, num_hidden_layers: int,
                     num_attention_heads: int, max_position_embeddings: int, seed: int = 0):
    """A Llama-style causal LM sized for CPU demos (about 0.1M parameters at the defaults)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
