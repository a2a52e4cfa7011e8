"""Tiny random-weight judges for tests, offline, in a second: a chat LM (real Qwen2 or Llama classes)
and a chat VLM (real LLaVA: CLIP vision tower + Llama), each written to a folder as a hub model is.

Same seed, same folder contents. The tokenizer is a byte-level BPE trained locally
(`umm_harness.core.tiny_tokenizer`) with ChatML-style turn markers and a chat template, so the
`transformers` backends, `python -m tasks.judges.server` and vLLM's CPU build all load them as
they would a hub judge. Head size 64 (vLLM refuses 16) and a long context (judge prompts carry
few-shot examples). Its replies are random text: tests use it to prove plumbing and the
failure accounting, and scripted stand-ins to prove scoring arithmetic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_judge(folder: Path | str, *, seed: int = 0, arch: Literal["qwen2", "llama"] = "qwen2",
                     max_position_embeddings: int = 8192) -> Path:
    """Write the tiny judge (weights, config, tokenizer, chat template) to `folder` and return it."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from umm_harness.core.tiny_tokenizer import train_tiny_tokenizer

    folder = Path(folder)
    tokenizer = train_tiny_tokenizer(
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, additional_tokens=["<|im_start|>"]
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
           "bos_token_id": tokenizer.pad_token_id}
    config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    config = config_cls(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                        max_position_embeddings=max_position_embeddings, tie_word_embeddings=False,
                        initializer_range=0.2, **ids)
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(**ids)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


VISION_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_vision_judge(folder: Path | str, *, seed: int = 0) -> Path:
    """Write a tiny `LlavaForConditionalGeneration` (32 px images) and its `LlavaProcessor` with a chat
    template to `folder`: a chat VLM that `AutoModelForImageTextToText` loads like a hub VLM judge."""
    import torch
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from umm_harness.core.tiny_tokenizer import train_tiny_tokenizer

    folder = Path(folder)
    tokenizer = train_tiny_tokenizer({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": "<s>"},
                                     extra_special_tokens={"image_token": "<image>"}, additional_tokens=["<|im_start|>"])
    processor = LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32},
                                                                      crop_size={"height": 32, "width": 32}),
                               tokenizer=tokenizer, chat_template=VISION_CHAT_TEMPLATE, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=32, patch_size=8, hidden_size=32,
                           intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=8192, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
