"""Tiny models built from a config, for tests and examples: no download, seconds to build.

``make_tiny_model(dir)`` writes a 2-layer Llama with a byte-level BPE tokenizer
trained locally on a few sentences (so any text round-trips) and a chat template.
``make_tiny_adapters(base, out, names)`` writes PEFT LoRA folders whose weights are
random (non-zero, so each adapter really changes the outputs).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = [
    "Question: Which number is larger? Options: A. 3 B. 7 Answer: B",
    "The answer is 42. #### 42",
    "Every bird can fly. Tom is a bird. Can Tom fly? yes no cannot be decided",
    "答案是：A 选择题 红盒里是什么？ 硬币 钥匙 卡片",
    "A B C D E 0 1 2 3 4 5 6 7 8 9 + - * = ? . , : ;",
]


def make_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer trained in memory; returns a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|bos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|end|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model(out_dir: str | Path, *, seed: int = 0, hidden_size: int = 32,
                    num_layers: int = 2, tied: bool = False) -> Path:
    """Write a random 2-layer Llama + tokenizer to ``out_dir`` (idempotent); return the path.
    ``tied``: lm_head shares the input embeddings, as SmolLM2's does."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    tok = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_tiny_adapters(base_dir: str | Path, out_dir: str | Path, names: Sequence[str],
                       *, rank: int = 4, target_modules: Sequence[str] = ("q_proj", "v_proj"),
                       scale: float = 0.5, invocation: Sequence[int] | None = None,
                       layers: Sequence[int] | None = None) -> dict[str, Path]:
    """Write one random PEFT LoRA folder per name under ``out_dir``; return name -> path.

    PEFT initialises ``lora_B`` to zero (an adapter that changes nothing); we fill
    both matrices with seeded noise so every adapter gives different outputs.
    ``invocation``: token ids making each an Activated LoRA (aLoRA); ``layers``: PEFT
    ``layers_to_transform`` (e.g. the top layers only).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths: dict[str, Path] = {}
    for i, name in enumerate(names):
        path = Path(out_dir) / name
        paths[name] = path
        if (path / "adapter_config.json").exists():
            continue
        base = AutoModelForCausalLM.from_pretrained(base_dir)
        # task_type CAUSAL_LM: without it PEFT never activates an aLoRA.
        cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(target_modules),
                         lora_dropout=0.0, task_type="CAUSAL_LM",
                         alora_invocation_tokens=list(invocation) if invocation else None,
                         layers_to_transform=list(layers) if layers is not None else None)
        model = get_peft_model(base, cfg)
        gen = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_" in pname:
                    p.copy_(torch.randn(p.shape, generator=gen) * scale)
        model.save_pretrained(path)
    return paths
