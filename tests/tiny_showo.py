"""A tiny random Show-o folder for tests: the real architecture (Phi with q/k LayerNorm, MAGVIT-v2
with LFQ) at toy size, written by `ShowoBackbone.save_pretrained`, so it loads through the registry
like a converted checkpoint. Nothing is downloaded.

Size: Phi hidden 32, 2 layers, 4 heads; MAGVIT-v2 with 32 channels (GroupNorm's 32 groups), four
levels of 1x (three downsamplings: 32 px → 4x4 = 16 tokens, the shapes world's native side) and one
residual block, 6 LFQ bits (64 codes); a 32-token text slot. The tokenizer is a lower-casing
word-level one over the shapes world's words and the adapter's prompt words, with Phi's
<|endoftext|> as <bos>/<eos> and Show-o's [PAD] and nine tokens added after it, as Show-o adds them
to Phi's tokenizer."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hermesflow.backbones.magvit2 import MagvitConfig
from hermesflow.backbones.showo import PAD_TOKEN, SPECIAL_TOKENS, ShowoBackbone, ShowoConfig
from hermesflow.testbed.tokenizers import world_words

ENDOFTEXT, UNK = "<|endoftext|>", "<unk>"
TINY_PHI = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "partial_rotary_factor": 0.5, "max_position_embeddings": 256, "hidden_act": "gelu_new",
            "layer_norm_eps": 1e-5, "rope_theta": 10000.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
            "attention_dropout": 0.0}
TINY_MAGVIT = MagvitConfig(ch=32, encoder_ch_mult=[1, 1, 1, 1], encoder_res_blocks=[1, 0, 0, 0],
                           decoder_ch_mult=[1, 1, 1, 1], decoder_res_blocks=[1, 0, 0, 0], bits=6)
# Show-o's own resolution: 256 px, 16x down (five levels) -> 16x16 = 256 image tokens
TINY_MAGVIT_256 = MagvitConfig(ch=32, encoder_ch_mult=[1] * 5, encoder_res_blocks=[1, 0, 0, 0, 0],
                               decoder_ch_mult=[1] * 5, decoder_res_blocks=[1, 0, 0, 0, 0], bits=6)


def tiny_phi_tokenizer(size: int | None = None) -> PreTrainedTokenizerFast:
    """The stand-in for Phi-1.5's tokenizer: word-level, <|endoftext|> 0, <unk> 1, then the words
    (and, to make it `size` ids long, unused fillers: 50295 is Phi-1.5's own size)."""
    defaults = ShowoConfig()
    templates = re.sub(r"\{\w+\}", " ", defaults.caption_prompt + " " + defaults.question_template)
    words = sorted(set(world_words()) | set(re.findall(r"\w+|[^\w\s]+", templates.lower())))
    words += [f"<unused{i}>" for i in range((size or 0) - 2 - len(words))]
    vocab = {token: i for i, token in enumerate([ENDOFTEXT, UNK] + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, unk_token=UNK)


def tiny_phi_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer as Phi-1.5's is (GPT-2's scheme: spaces kept as bytes, nothing added in
    front), trained here on the shapes world's words and the adapter's prompts, <|endoftext|> first."""
    defaults = ShowoConfig()
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [defaults.caption_prompt, defaults.question_template, " ".join(world_words())]
    backend.train_from_iterator(corpus * 4, trainers.BpeTrainer(vocab_size=500, special_tokens=[ENDOFTEXT], show_progress=False,
                                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, unk_token=ENDOFTEXT)


def tiny_showo_tokenizer(bpe: bool = False, size: int | None = None) -> PreTrainedTokenizerFast:
    """`tiny_phi_tokenizer` (`size` ids long; or with `bpe`, `tiny_phi_bpe_tokenizer`) with [PAD] and
    Show-o's nine tokens added after its words."""
    tokenizer = tiny_phi_bpe_tokenizer() if bpe else tiny_phi_tokenizer(size)
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})  # as UniversalPrompting extends Phi's tokenizer
    tokenizer.add_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def tiny_showo_config(text_vocab: int, image_size: int = 32, context: int | None = None) -> ShowoConfig:
    """32 px (16 tokens, the default, fast) or Show-o's 256 px (256 tokens); `context` positions (default:
    64 more than the image's tokens)."""
    magvit = {32: TINY_MAGVIT, 256: TINY_MAGVIT_256}[image_size]
    tokens = (image_size // magvit.downsample) ** 2
    return ShowoConfig(phi={**TINY_PHI, "max_position_embeddings": context or 64 + tokens}, magvit=magvit.to_dict(),
                       llm_vocab_size=text_vocab, num_vq_tokens=tokens, image_size=image_size, max_seq_length=32,
                       bos_id=0, eos_id=0)


def make_tiny_showo(folder: str | Path, seed: int = 0, image_size: int = 32, context: int | None = None, bpe: bool = False) -> Path:
    """Write a tiny random Show-o folder (config.json, model.safetensors, tokenizer; byte-level BPE with
    `bpe`) and return it."""
    folder = Path(folder)
    tokenizer = tiny_showo_tokenizer(bpe)
    torch.manual_seed(seed)
    model = ShowoBackbone(tiny_showo_config(len(tokenizer) - 1 - len(SPECIAL_TOKENS), image_size, context), tokenizer)
    with torch.no_grad():  # Phi's 0.02-std init gives near-uniform outputs; wider weights make tests sharper
        for name, p in model.showo.named_parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3 if "embed" in name else 1 / p.shape[1] ** 0.5)
    model.save_pretrained(folder)
    return folder
