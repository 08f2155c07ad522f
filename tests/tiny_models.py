"""Builders of tiny random model folders for tests: real architectures at toy sizes, written in the
same format as the real checkpoints, so adapters are tested on exactly what they will load.
Nothing here downloads anything."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    JanusConfig,
    JanusForConditionalGeneration,
    JanusProcessor,
    LlamaConfig,
    PreTrainedTokenizerFast,
)
from transformers.models.janus.configuration_janus import JanusVisionConfig, JanusVQVAEConfig
from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

from hermesflow.backbones.janus import CAPTION_QUESTION, GENERATION_TEMPLATE, SYSTEM_PROMPT, UNDERSTANDING_TEMPLATE
from hermesflow.testbed.tokenizers import world_words

# Janus-Pro's own special-token strings, so the adapter meets the names it will meet in real folders.
JANUS_SPECIALS = {
    "unk_token": "<unk>",
    "bos_token": "<｜begin▁of▁sentence｜>",
    "eos_token": "<｜end▁of▁sentence｜>",
    "pad_token": "<｜▁pad▁｜>",
    "image_token": "<image_placeholder>",
    "boi_token": "<begin_of_image>",
    "eoi_token": "<end_of_image>",
}
JANUS_ROLES = ("<|User|>", "<|Assistant|>")
# the chat template transformers' converter writes into Janus-Pro folders (fixtures/janus/README.md)
JANUS_CHAT_TEMPLATE = (Path(__file__).parent / "fixtures" / "janus" / "chat_template.jinja").read_text(encoding="utf-8")


def tiny_janus_words() -> list[str]:
    """The shapes world's words plus those of the adapter's prompt templates."""
    templates = f"{SYSTEM_PROMPT} {CAPTION_QUESTION} {UNDERSTANDING_TEMPLATE} {GENERATION_TEMPLATE}"
    templates = re.sub(r"<\|\w+\|>|\{\w+\}", " ", templates)
    template_words = re.findall(r"\w+|[^\w\s]+", templates.lower())  # what the Whitespace pre-tokenizer splits
    return sorted(set(world_words()) | set(template_words))


def tiny_janus_tokenizer() -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over `tiny_janus_words()` with Janus's special tokens
    (ids 0..8: <unk>, bos, eos, pad, image placeholder, boi, eoi, <|User|>, <|Assistant|>)."""
    specials = list(JANUS_SPECIALS.values()) + list(JANUS_ROLES)
    vocab = {token: i for i, token in enumerate(specials + tiny_janus_words())}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=JANUS_SPECIALS["unk_token"]))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    named = {k: v for k, v in JANUS_SPECIALS.items() if k in ("unk_token", "bos_token", "eos_token", "pad_token")}
    extra = {k: v for k, v in JANUS_SPECIALS.items() if k not in named}
    return PreTrainedTokenizerFast(tokenizer_object=backend, extra_special_tokens=extra, **named)


def tiny_janus_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer as Janus-Pro's is (spaces and newlines kept as bytes, <bos> added in
    front when asked for special tokens), trained here on the shapes world's words and the prompts,
    with Janus-Pro's special tokens first."""
    specials = list(JANUS_SPECIALS.values()) + list(JANUS_ROLES)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [SYSTEM_PROMPT, CAPTION_QUESTION, UNDERSTANDING_TEMPLATE, GENERATION_TEMPLATE, " ".join(world_words())]
    backend.train_from_iterator(corpus * 4, trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = JANUS_SPECIALS["bos_token"]
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, backend.token_to_id(bos))])
    named = {k: v for k, v in JANUS_SPECIALS.items() if k in ("unk_token", "bos_token", "eos_token", "pad_token")}
    extra = {k: v for k, v in JANUS_SPECIALS.items() if k not in named}
    return PreTrainedTokenizerFast(tokenizer_object=backend, extra_special_tokens=extra, **named)


def tiny_janus_config(vocab_size: int, image_size: int = 64, image_token_id: int = 4) -> JanusConfig:
    """Janus-Pro's architecture at toy size: hidden 64, 2 layers everywhere, 16px vision patches and a
    16x-downsampling VQ model (5 levels of 32 channels, a multiple of GroupNorm's 32 groups) with 64
    codes, so the VQ grid equals the patch grid: (image_size / 16)^2 image tokens."""
    if image_size % 16:
        raise ValueError(f"the tiny Janus needs an image side that is a multiple of 16, got {image_size}")
    hidden, grid = 64, image_size // 16
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       bos_token_id=1, eos_token_id=2, pad_token_id=3, initializer_range=0.2)
    vision = JanusVisionConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, image_size=image_size,
                               patch_size=16, projection_dim=hidden, num_image_tokens=grid * grid, mlp_ratio=2.0)
    vq = JanusVQVAEConfig(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32,
                          channel_multiplier=[1, 1, 1, 1, 1], num_res_blocks=1, projection_dim=hidden,
                          image_token_embed_dim=hidden, initializer_range=0.2)
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=image_token_id,
                       tie_word_embeddings=False)


def make_tiny_janus(folder: Path, image_size: int = 64, seed: int = 0, tokenizer: PreTrainedTokenizerFast | None = None,
                    system_prompt: bool = True) -> Path:
    """Write a random tiny Janus folder (weights, config, tokenizer, processor config with the converter's
    chat template and, as converted Janus-Pro folders say, `use_default_system_prompt`) in transformers'
    format, loadable by `load_backbone` and by `JanusForConditionalGeneration.from_pretrained`."""
    folder = Path(folder)
    tokenizer = tokenizer or tiny_janus_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids(JANUS_SPECIALS["image_token"])
    config = tiny_janus_config(len(tokenizer), image_size, image_token_id)
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config)
    model.save_pretrained(folder)
    image_processor = JanusImageProcessorPil(size={"height": image_size, "width": image_size},
                                             image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = JanusProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               num_image_tokens=config.vision_config.num_image_tokens, chat_template=JANUS_CHAT_TEMPLATE,
                               use_default_system_prompt=system_prompt)
    processor.save_pretrained(folder)
    return folder
