"""Show-o (Xie et al., arXiv 2408.12528), the backbone HermesFlow's paper post-trains, behind the
backbone protocol; written here and proven against numbers from the reference code
(tests/fixtures/showo/README.md).

One Phi-1.5 transformer (transformers' `PhiForCausalLM`, with Show-o's q/k LayerNorm) reads and
writes text and MAGVIT-v2 image codes in one vocabulary:

    ids 0 .. 50294          Phi's text tokens (<|endoftext|> = 50256 is both <bos> and <eos>)
    50295 .. 50304          [PAD] <|soi|> <|eoi|> <|sov|> <|eov|> <|t2i|> <|mmu|> <|t2v|> <|v2v|> <|lvg|>
    50305 .. 58496          image code c as 50305 + c
    58497                   the mask token

Sequences, as Show-o's `UniversalPrompting` builds them (P = max_seq_length + 1 = 129):

    text-to-image   [PAD]... <|t2i|> <bos> prompt <eos>  (left-padded to P)  <|soi|> image <|eoi|>
    understanding   <|mmu|> <|soi|> image <|eoi|> <bos> prompt answer <eos>

Attention is a float additive mask ("omni-attention"; with eager attention a boolean 4-D mask would be
added as 0/1): text is causal, the <|soi|>..<|eoi|> block sees the whole sequence except padding
(bidirectional inside the image), and in understanding everything up to <|eoi|> sees everything up to
<|eoi|>. Image tokens are predicted in place by masked modelling (MaskGIT); text is predicted
autoregressively.

- Understanding inputs are image codes (N, L): `prepare_images` resizes any RGB image to the model's
  side as Show-o's `image_transform` does and tokenises it with MAGVIT-v2; generated images are their
  codes already, so `prepare_generated` passes them through (no decode/re-encode round trip).
- Captions are the answer to `caption_prompt` (HermesFlow's own captioning prompt in Show-o's chat
  layout, "USER: \\nGive a caption for this image. ASSISTANT:"); a multiple-choice answer is the
  choice with the highest log π(" choice" <eos> | image, question).
- Generation: MaskGIT with guidance (1 + w)·cond − w·uncond over the image codes only. The default
  `sampler` "official" is Show-o's `t2i_generate` step for step (`official_maskgit_decode`); "shared"
  uses HermesFlow's `maskgit.maskgit_decode`.
- Image log-probs: `OfficialMaskedEstimator` (the default) is HermesFlow's own estimator
  (train_pairdpo.py); `MaskedEstimator` is the shared one. Both share masks through the seeds.
- The MAGVIT-v2 tokenizer stays in float32 whatever the language model's dtype: its sign quantiser
  would flip the codes of near-zero latents in bfloat16. It is frozen; LoRA and training touch only
  the Phi model (`trainable_module`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import DynamicCache, PhiConfig, PhiForCausalLM, PreTrainedTokenizerFast, StaticCache
from transformers.models.phi.modeling_phi import PhiRotaryEmbedding

from hermesflow.backbones.base import (
    BackboneBase,
    ExactEstimator,
    GenerationConfig,
    ImageEstimator,
    LogProbs,
    MaskedEstimator,
    check_answers,
    check_choices,
    check_rgb,
    choice_scores,
    per_question,
    repeated_cache,
    rgb_problems,
    sample_token,
    short,
    token_problem,
)
from hermesflow.backbones.magvit2 import MagvitConfig, MagvitV2, pixel_values, to_uint8
from hermesflow.backbones.maskgit import (
    MASKED,
    Trajectory,
    TrajectoryEstimator,
    cfg_logits,
    masked_logps,
    maskgit_decode,
    trajectory_logps,
)
from hermesflow.errors import UsageError
from hermesflow.io import atomic_write_json
from hermesflow.progress import track

MODEL_TYPE = "show-o"
WEIGHTS, CONFIG = "model.safetensors", "config.json"
# Added after Phi's vocabulary, in this order, by Show-o's UniversalPrompting: [PAD] then these nine.
SPECIAL_TOKENS = ("<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>", "<|lvg|>")
PAD_TOKEN = "[PAD]"
N_NEW_TOKENS = 1 + len(SPECIAL_TOKENS)
# microsoft/phi-1_5's config.json (what Show-o's `llm_model_path` names); Show-o turns qk_layernorm on.
PHI_1_5 = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
           "partial_rotary_factor": 0.5, "max_position_embeddings": 2048, "hidden_act": "gelu_new",
           "layer_norm_eps": 1e-5, "rope_theta": 10000.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
           "attention_dropout": 0.0}
PHI_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "dense")  # Phi's attention projections (its MLP: fc1, fc2)


@dataclass
class ShowoConfig:
    """Everything needed to rebuild the model. Defaults are `showlab/show-o` (256 px); its 512 px
    sibling differs in `image_size` 512 and `num_vq_tokens` 1024 only."""

    phi: dict = field(default_factory=lambda: dict(PHI_1_5))  # PhiConfig fields except the vocabulary size
    magvit: dict = field(default_factory=lambda: MagvitConfig().to_dict())
    llm_vocab_size: int = 50295  # Phi's tokenizer; the new tokens and image codes follow it
    num_vq_tokens: int = 256
    image_size: int = 256
    max_seq_length: int = 128  # the text slot of text-to-image sequences, Show-o's max_seq_length
    bos_id: int = 50256
    eos_id: int = 50256
    caption_prompt: str = "USER: \nGive a caption for this image. ASSISTANT:"  # HermesFlow's captioning question
    question_template: str = "USER: \n{question} ASSISTANT:"  # Show-o's inference_mmu.py layout
    sampler: str = "official"  # MaskGIT decoding: "official" (Show-o's t2i_generate) or "shared"

    def __post_init__(self) -> None:
        if self.sampler not in ("official", "shared"):
            raise UsageError(f"Show-o config: sampler must be 'official' or 'shared', got {self.sampler!r}")
        if "{question}" not in self.question_template:
            raise UsageError("Show-o config: question_template needs a {question} field")

    # ids of the tokens the sequences are built from
    @property
    def pad_id(self) -> int:
        return self.llm_vocab_size

    def special_id(self, token: str) -> int:
        return self.llm_vocab_size + 1 + SPECIAL_TOKENS.index(token)

    @property
    def image_offset(self) -> int:
        """Vocabulary id of image code 0."""
        return self.llm_vocab_size + N_NEW_TOKENS

    @property
    def codebook_size(self) -> int:
        return MagvitConfig(**self.magvit).codebook_size

    @property
    def mask_id(self) -> int:
        return self.image_offset + self.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.mask_id + 1

    def phi_config(self) -> PhiConfig:
        return PhiConfig(**self.phi, vocab_size=self.vocab_size, qk_layernorm=True, tie_word_embeddings=False,
                         bos_token_id=self.bos_id, eos_token_id=self.eos_id, pad_token_id=None)


@dataclass(frozen=True)
class OfficialMaskedEstimator(MaskedEstimator):
    """HermesFlow's own image log-prob for Show-o (Gen-Verse/HermesFlow, training/train_pairdpo.py
    with training/utils.py's `mask_or_random_replace_tokens_dpo` and `Showo.loss_for_unidpo`).

    Per draw: t ~ U(0, 1) and a mask ratio cos(πt/2); round(ratio · L) tokens masked (at least 1) at
    the positions of the `count` smallest of L uniform draws; the log-softmax over the *whole*
    vocabulary (text, image codes and the mask token), summed at the masked positions and, as the
    official code's t2i labels keep them, at the <|soi|> and <|eoi|> positions predicting themselves
    (Show-o is trained to predict them too, so for a trained model these two terms are near 0).
    `count` is the number of masked image tokens (the two boundary terms are in the sum, not the count).

    The draws come from a generator seeded with the example's seed alone, in the official order
    (t first, then the L uniforms), so with one draw a seed gives the official code's mask after
    `torch.manual_seed(seed)` for a batch of one. The same seed masks chosen and rejected alike."""

    name: ClassVar[str] = "showo-official"


def official_masks(seeds: Sequence[int], samples: int, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, L) masks and (B, K) mask ratios of `OfficialMaskedEstimator`, drawn on the CPU."""
    masks, ratios = [], []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        for _ in range(samples):
            ratio = torch.cos(torch.rand(1, generator=g) * math.pi * 0.5)  # the official cosine_schedule
            count = (n_tokens * ratio).round().clamp(min=1)
            masks.append(torch.rand(n_tokens, generator=g).argsort() < count)
            ratios.append(count[0] / n_tokens)
    b = len(seeds)
    return torch.stack(masks).view(b, samples, n_tokens), torch.stack(ratios).view(b, samples)


def official_maskgit_decode(guided_logits: Callable[[torch.Tensor], torch.Tensor], batch: int, length: int,
                            steps: int, temperature: float, generator: torch.Generator, device: torch.device,
                            trace: list | None = None) -> torch.Tensor:
    """MaskGIT decoding exactly as Show-o's `Showo.t2i_generate` (models/modeling_showo.py,
    models/sampling.py) does it, where `maskgit.maskgit_decode` differs in ways that change samples:

    - each step keeps max(1, min(still masked − 1, floor(L · cos(π/2 · (s+1)/S)))) tokens masked, so
      at least one token is revealed per step even where the cosine count repeats (it does at 50 steps
      and 256 tokens) and one stays masked until the end (the codes sampled at the last step are
      returned, so none stays masked in the result);
    - a revealed token's confidence is log(float32 max), not +inf, before the Gumbel noise;
    - the Gumbel noise is scaled by the running product T·Π_{i≤s}(1 − (i+1)/S) (the reference
      overwrites its temperature with temperature·(1 − ratio) at every step), not by T(1 − (s+1)/S).

    Draws consume `generator` in the official order (a multinomial over the B·L rows, then B·L
    uniforms for the Gumbel noise) on the CPU, so the official code run on the CPU with the same
    generator gives the same codes. At temperature 1 (Show-o's) this is the official sampler;
    temperature T divides the logits (0: argmax) and starts the noise's scale.
    `trace`, if given, receives the codes after each step (masked positions MASKED)."""
    codes = torch.full((batch, length), MASKED, dtype=torch.long, device=device)
    sampled, noise_scale = codes, temperature
    for step in track(range(steps), "step"):
        logits = guided_logits(codes).float()
        probs = F.softmax(logits / temperature if temperature > 0 else logits, dim=-1)
        if temperature > 0:
            flat = probs.reshape(-1, probs.shape[-1]).cpu()
            sampled = torch.multinomial(flat, 1, generator=generator)[:, 0].view(batch, length).to(device)
        else:
            sampled = probs.argmax(-1)
        unknown = codes == MASKED
        sampled = torch.where(unknown, sampled, codes)
        ratio = (step + 1) / steps
        keep = torch.floor(length * torch.cos(torch.tensor(ratio) * math.pi * 0.5))  # float32, as the reference
        keep = torch.maximum(torch.ones(()), torch.minimum(unknown.sum(-1, keepdim=True).cpu() - 1, keep)).long()
        selected = probs.gather(-1, sampled[..., None])[..., 0]
        selected = torch.where(unknown, selected, torch.finfo(selected.dtype).max)
        noise = torch.zeros(selected.shape).uniform_(0, 1, generator=generator).to(device)
        gumbel = -torch.log((-torch.log(noise.clamp(min=1e-20))).clamp(min=1e-20))
        noise_scale = noise_scale * (1.0 - ratio)
        confidence = torch.log(selected.clamp(min=1e-20)) + noise_scale * gumbel
        cut = confidence.sort(dim=-1).values.gather(1, keep.to(device))
        codes = torch.where(confidence < cut, MASKED, sampled)
        if trace is not None:
            trace.append(codes.clone())
    return sampled


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, Q, K) booleans → (B, 1, Q, K) float mask: 0 where allowed, the dtype's minimum elsewhere.
    Additive floats, because eager attention adds a boolean 4-D mask as 0/1."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None]


class ShowoBackbone(BackboneBase):
    """Show-o behind the backbone protocol (see the module docstring)."""

    model_type: ClassVar[str] = MODEL_TYPE
    default_guidance: ClassVar[float] = 5.0  # the official inference's guidance_scale=5, in the same convention
    lora_targets: ClassVar[tuple[str, ...]] = PHI_PROJECTIONS  # MAGVIT's attention convs are q, k, v: no clash
    caption_max_tokens: ClassVar[int] = 64  # sampled captions stop here if no <eos> came first

    def __init__(self, cfg: ShowoConfig, tokenizer=None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer  # only the text-taking methods need it; the id-level ones do not
        magvit = MagvitConfig(**cfg.magvit)
        side = math.isqrt(cfg.num_vq_tokens)
        if side * side != cfg.num_vq_tokens or side * magvit.downsample != cfg.image_size:
            raise UsageError(f"Show-o config: {cfg.num_vq_tokens} image tokens are not a square grid of "
                             f"{cfg.image_size}px / {magvit.downsample}px per token")
        self.image_size: int = cfg.image_size
        self.showo = PhiForCausalLM(cfg.phi_config())
        self.vq_model = MagvitV2(magvit).requires_grad_(False)
        self.n_image_tokens = cfg.num_vq_tokens
        self.prefix_len = cfg.max_seq_length + 1  # the t2i text slot with its task token
        if tokenizer is not None:
            self._check_tokenizer(tokenizer)

    def _check_tokenizer(self, tokenizer) -> None:
        expected = {PAD_TOKEN: self.cfg.pad_id, **{t: self.cfg.special_id(t) for t in SPECIAL_TOKENS}}
        wrong = {t: tokenizer.convert_tokens_to_ids(t) for t, i in expected.items() if tokenizer.convert_tokens_to_ids(t) != i}
        if wrong:
            raise UsageError(f"Show-o tokenizer: special tokens at the wrong ids {wrong}; expected {expected} "
                             "(Phi's tokenizer with [PAD] and the nine Show-o tokens added in order)")

    # ----- loading and saving ---------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype = torch.float32) -> ShowoBackbone:
        """A folder written by `save_pretrained` or `convert_showo`: config.json, model.safetensors and
        the tokenizer. The language model in `dtype`, the MAGVIT-v2 tokenizer in float32."""
        directory = Path(directory)
        for name in (CONFIG, WEIGHTS):
            if not (directory / name).is_file():
                raise UsageError(f"model folder {directory}: {name} not found (expected a Show-o folder from "
                                 "save_pretrained or convert-showo)")
        try:
            raw = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"model folder {directory}: {CONFIG} is not valid JSON ({e})") from None
        if raw.pop("model_type", None) != MODEL_TYPE:
            raise UsageError(f"model folder {directory}: {CONFIG} is not a HermesFlow Show-o config (model_type "
                             f"{MODEL_TYPE!r})")
        unknown = set(raw) - set(ShowoConfig.__dataclass_fields__)
        if unknown:
            raise UsageError(f"model folder {directory}: unknown Show-o config keys {sorted(unknown)}")
        try:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError) as e:
            raise UsageError(f"model folder {directory}: cannot load its tokenizer ({e})") from None
        with torch.device("meta"):
            model = cls(ShowoConfig(**raw))
        model._check_tokenizer(tokenizer)
        model.tokenizer = tokenizer
        try:
            state = load_file(str(directory / WEIGHTS))
        except (OSError, SafetensorError) as e:
            raise UsageError(f"model folder {directory}: {WEIGHTS} cannot be read ({e})") from None
        model.load_weights(state, f"model folder {directory}")
        model.showo.to(dtype)
        return model.eval()

    def load_weights(self, state: dict[str, torch.Tensor], where: str) -> None:
        """Load a full state dict (names as `state_dict()`), naming every missing, unexpected or
        misshapen tensor. The MAGVIT-v2 part is kept in float32."""
        expected = {k: v.shape for k, v in self.state_dict().items()}
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k])})" for k in sorted(set(state) & set(expected))
                 if tuple(state[k].shape) != tuple(expected[k])]
        if missing or extra or wrong:
            raise UsageError(f"{where}: the weights do not fit the Show-o config: " + "; ".join(
                part for part in (f"missing {_listing(missing)}" if missing else "",
                                  f"unexpected {_listing(extra)}" if extra else "",
                                  f"wrong shapes {_listing(wrong)}" if wrong else "") if part))
        state = {k: v.float() if k.startswith("vq_model.") else v for k, v in state.items()}
        self.load_state_dict(state, strict=True, assign=True)
        # Buffers that are not saved (rotary frequencies, LFQ bit values) are rebuilt when the model
        # was built on the meta device to skip initialising weights about to be replaced.
        if self.showo.model.rotary_emb.inv_freq.is_meta:
            self.showo.model.rotary_emb = PhiRotaryEmbedding(config=self.showo.config)
        if self.vq_model.bit_values.is_meta:
            self.vq_model.bit_values = 2 ** torch.arange(self.vq_model.cfg.bits - 1, -1, -1)
        self.vq_model.requires_grad_(False)

    def save_pretrained(self, directory: str | Path) -> None:
        """Weights (safetensors), config.json with `model_type` and the tokenizer; no pickle."""
        if self.peft_model is not None:
            raise UsageError("the model has a LoRA adapter: merge it first (merge_lora) or save it alone (save_adapter)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tmp = directory / f".{WEIGHTS}.tmp"
        save_file(state, str(tmp), metadata={"format": "pt"})
        tmp.replace(directory / WEIGHTS)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory))
        atomic_write_json(directory / CONFIG, {"model_type": MODEL_TYPE, **asdict(self.cfg)})

    def trainable_module(self) -> PhiForCausalLM:
        return self.showo

    def shard_units(self) -> list[nn.Module]:
        return list(self.showo.model.layers)

    def default_estimator(self) -> ImageEstimator:
        return OfficialMaskedEstimator()

    # ----- what the model can represent -----------------------------------------------------------

    @property
    def text_slot(self) -> int:
        """Prompt tokens the text-to-image slot holds: <|t2i|> <bos> prompt <eos>, left-padded to max_seq_length + 1."""
        return self.cfg.max_seq_length - 2

    def prompt_cut(self, prompt: str) -> int:
        return max(0, len(self._encode(prompt)) - self.text_slot) if self.long_text == "truncate" else 0

    def prompt_problems(self, prompts: Sequence[str]) -> list[str]:
        return self.fit_problems(None, prompts, understanding=False)

    def fit_problems(self, image: np.ndarray | None, texts: Sequence[str], understanding: bool = True) -> list[str]:
        problems = rgb_problems(np.asarray(image)) if image is not None else []
        slot = self.text_slot
        context = self.showo.config.max_position_embeddings
        specials = set(range(self.cfg.pad_id, self.cfg.image_offset))
        caption_prefix = 4 + self.n_image_tokens + len(self._encode(self.cfg.caption_prompt))
        for text in texts:
            ids = self._encode(text)
            problem = token_problem(text, ids, specials, self.tokenizer.unk_token_id, "Show-o")
            if problem:
                problems.append(problem)
            elif len(ids) > slot and self.long_text == "refuse":
                problems.append(f"text {short(text)} is {len(ids)} tokens; Show-o's text-to-image prompt holds "
                                f"{slot} (max_seq_length {self.cfg.max_seq_length} with <|t2i|> <bos> ... <eos>); "
                                "--long-text truncate cuts it there, as Show-o's own pipeline does")
            elif understanding:
                question = 4 + self.n_image_tokens + len(self._encode(self.cfg.question_template.format(question=text)))
                need = max(caption_prefix + len(self._answer_ids(text)), question + 2)
                if need > context:
                    problems.append(f"text {short(text)} needs {need} positions in an understanding sequence; "
                                    f"Show-o's context is {context}")
        return problems

    # ----- sequences (ids only, as UniversalPrompting builds them) --------------------------------

    def _encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise UsageError("this Show-o model has no tokenizer; load it with from_pretrained")
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _answer_ids(self, answer: str) -> list[int]:
        # "ASSISTANT: {answer}": the space after the colon belongs to the answer
        return self._encode(" " + answer) + [self.cfg.eos_id]

    def t2i_prefix(self, text_ids: list[int]) -> list[int]:
        """[PAD]... <|t2i|> <bos> text <eos>, left-padded to max_seq_length + 1 ([] is unconditional)."""
        if len(text_ids) > self.text_slot and self.long_text == "truncate":  # as UniversalPrompting cuts it
            text_ids = text_ids[: self.text_slot]
        row = [self.cfg.special_id("<|t2i|>"), self.cfg.bos_id, *text_ids, self.cfg.eos_id]
        if len(row) > self.prefix_len:
            raise UsageError(f"a text-to-image prompt of {len(text_ids)} tokens does not fit Show-o's text slot of "
                             f"{self.text_slot} (check fit_problems first, or use --long-text truncate)")
        return [self.cfg.pad_id] * (self.prefix_len - len(row)) + row

    def t2i_ids(self, prompts: list[list[int]], codes: torch.Tensor) -> torch.Tensor:
        """(B, P + L + 2) text-to-image sequences over `codes` (B, L), MASKED where masked."""
        prefix = torch.tensor([self.t2i_prefix(p) for p in prompts], device=codes.device)
        image = torch.where(codes == MASKED, self.cfg.mask_id, codes + self.cfg.image_offset)
        soi = torch.full((len(codes), 1), self.cfg.special_id("<|soi|>"), device=codes.device)
        eoi = torch.full((len(codes), 1), self.cfg.special_id("<|eoi|>"), device=codes.device)
        return torch.cat([prefix, soi, image, eoi], dim=1)

    def t2i_allowed(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T, T) omni-attention of text-to-image sequences: causal text, the image block sees all;
        no row but padding sees padding (padding rows see the padding before them, so no row is empty)."""
        t = ids.shape[1]
        pos = torch.arange(t, device=ids.device)
        causal = pos[None, :] <= pos[:, None]
        image_rows = pos >= self.prefix_len  # <|soi|> image <|eoi|>
        pad = ids == self.cfg.pad_id
        return (causal | image_rows[:, None])[None] & (~pad[:, None, :] | pad[:, :, None])

    def mmu_ids(self, codes: torch.Tensor, texts: list[list[int]], width: int | None = None) -> torch.Tensor:
        """(B, T) <|mmu|> <|soi|> image <|eoi|> <bos> text, right-padded with [PAD] to `width`
        (default: the longest row). `texts` carry their own <eos> where they have one."""
        b, device = len(codes), codes.device
        room = (width - self.n_image_tokens - 4) if width else max(map(len, texts), default=0)
        head = torch.tensor([self.cfg.special_id("<|mmu|>"), self.cfg.special_id("<|soi|>")], device=device)
        tail = torch.tensor([self.cfg.special_id("<|eoi|>"), self.cfg.bos_id], device=device)
        text = torch.tensor([t + [self.cfg.pad_id] * (room - len(t)) for t in texts], dtype=torch.long, device=device)
        return torch.cat([head.expand(b, 2), codes + self.cfg.image_offset, tail.expand(b, 2), text.view(b, room)], 1)

    def mmu_allowed(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T, T): causal, and everything up to <|eoi|> sees everything up to <|eoi|>."""
        t = ids.shape[1]
        pos = torch.arange(t, device=ids.device)
        prefix = pos <= self.n_image_tokens + 2  # <|mmu|> <|soi|> image <|eoi|>
        return ((pos[None, :] <= pos[:, None]) | (prefix[None, :] & prefix[:, None]))[None].expand(len(ids), t, t)

    # ----- forward pieces -------------------------------------------------------------------------

    def hidden(self, ids: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Last hidden states (B, T, H) under the boolean attention pattern `allowed` (B, T, T)."""
        return self.showo.model(input_ids=ids, attention_mask=additive_mask(allowed, self.dtype)).last_hidden_state

    def logits(self, ids: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Logits over the whole vocabulary (B, T, V), float32."""
        return self.showo.lm_head(self.hidden(ids, allowed)).float()

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the image codes only (…, codebook): the head's rows of the codes, float32."""
        head = self.showo.lm_head
        rows = slice(self.cfg.image_offset, self.cfg.mask_id)
        return F.linear(hidden, head.weight[rows], head.bias[rows]).float()

    def _image_hidden(self, prompts: list[list[int]], codes: torch.Tensor) -> torch.Tensor:
        """Hidden states at the image positions (B, L, H) of text-to-image sequences."""
        ids = self.t2i_ids(prompts, codes)
        return self.hidden(ids, self.t2i_allowed(ids))[:, self.prefix_len + 1 : -1]

    # ----- understanding --------------------------------------------------------------------------

    def prepare_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(N, L) MAGVIT-v2 codes of RGB images of any size (resized and centre-cropped)."""
        arrays = [check_rgb(np.asarray(image)) for image in images]
        with torch.no_grad():
            pixels = pixel_values(arrays, self.image_size).to(self.device)
            return self.vq_model.encode(pixels) if arrays else torch.zeros(0, self.n_image_tokens, dtype=torch.long,
                                                                            device=self.device)

    def prepare_generated(self, tokens: torch.Tensor) -> torch.Tensor:
        """Generated images are read as the codes they were drawn as."""
        return self._check_codes(tokens)

    def text_logps(self, codes: torch.Tensor, prefixes: list[list[int]], targets: list[list[int]]) -> LogProbs:
        """log π(target | image, prefix) per row of understanding sequences
        <|mmu|> <|soi|> image <|eoi|> <bos> prefix target, teacher-forced in one right-padded batch."""
        start = self.n_image_tokens + 4  # the first text position after <bos>
        ids = self.mmu_ids(codes, [p + t for p, t in zip(prefixes, targets)])
        hidden = self.hidden(ids, self.mmu_allowed(ids))
        longest = max(map(len, targets))
        # target j of a row is predicted at position start + len(prefix) - 1 + j; padding slots reuse the last
        where = torch.tensor([[start + len(p) - 1 + min(j, len(t) - 1) for j in range(longest)]
                              for p, t in zip(prefixes, targets)], device=self.device)
        target = torch.tensor([t + [t[-1]] * (longest - len(t)) for t in targets], device=self.device)
        valid = torch.tensor([[j < len(t) for j in range(longest)] for t in targets], device=self.device)
        hidden = hidden.gather(1, where[..., None].expand(-1, -1, hidden.shape[-1]))
        logps = self.showo.lm_head(hidden).float().log_softmax(-1).gather(-1, target[..., None])[..., 0]
        logps = torch.where(valid, logps, 0.0)
        return LogProbs(logps.sum(-1), valid.sum(-1).float())

    def caption_logps(self, inputs: torch.Tensor, captions: Sequence[str]) -> LogProbs:
        if len(inputs) != len(captions):
            raise UsageError(f"caption_logps: {len(inputs)} images but {len(captions)} captions")
        prompt = self._encode(self.cfg.caption_prompt)
        return self.text_logps(self._check_codes(inputs), [prompt] * len(captions),
                               [self._answer_ids(c) for c in captions])

    def _question_ids(self, question: str) -> list[int]:
        return self._encode(self.cfg.question_template.format(question=question))

    def answer_logps(self, inputs: torch.Tensor, questions: Sequence[str], answers: Sequence[str]) -> LogProbs:
        check_answers(inputs, questions, answers)
        return self.text_logps(self._check_codes(inputs), [self._question_ids(q) for q in questions],
                               [self._answer_ids(a) for a in answers])

    def choice_logps(self, inputs: torch.Tensor, questions: Sequence[str], choices: Sequence[Sequence[str]],
                     score: str = "sum", batch_size: int = 64) -> list[list[float]]:
        """log π(" choice" <eos> | image, question) of each choice, summed over its tokens (or their mean)."""
        check_choices(inputs, questions, choices)
        codes = self._check_codes(inputs)
        rows = [(i, option) for i, options in enumerate(choices) for option in options]
        prompts = [self._question_ids(q) for q in questions]
        scores = []
        with self.sampling():
            for s in track(range(0, len(rows), batch_size), "batch"):
                chunk = rows[s : s + batch_size]
                owners = torch.tensor([i for i, _ in chunk], device=self.device)
                scores.append(choice_scores(self.text_logps(codes[owners], [prompts[i] for i, _ in chunk],
                                                            [self._answer_ids(o) for _, o in chunk]), score))
        return per_question(torch.cat(scores) if scores else torch.zeros(0), choices)

    def continue_text(self, ids: torch.Tensor, max_new: int, temperature: float, top_k: int,
                      generator: torch.Generator | None, text_only: bool = True, n: int = 1) -> torch.Tensor:
        """(B·n, ≤ max_new) tokens, `n` samples (adjacent) after each of the understanding sequences
        `ids` (B, T) of equal length, which runs once; with a KV cache allocated once. Rows that
        reached <eos> repeat it. `text_only` keeps draws among text ids."""
        eos = self.cfg.eos_id
        prefix = DynamicCache(config=self.showo.config)
        out = self.showo.model(input_ids=ids, attention_mask=additive_mask(self.mmu_allowed(ids), self.dtype),
                               cache=prefix, use_cache=True)
        cache = repeated_cache(prefix, n, StaticCache(config=self.showo.config, max_cache_len=ids.shape[1] + max_new))
        hidden, tokens = out.last_hidden_state[:, -1].repeat_interleave(n, dim=0), []
        done = torch.zeros(len(hidden), dtype=torch.bool, device=self.device)
        for step in track(range(max_new), "token"):
            logits = self.showo.lm_head(hidden).float()
            if text_only:
                logits[:, self.cfg.llm_vocab_size :] = float("-inf")
            token = torch.where(done, eos, sample_token(logits, temperature, top_k, generator))
            tokens.append(token)
            done = done | (token == eos)
            if step == max_new - 1 or bool(done.all()):
                break
            # the new token sees every earlier position: no mask beyond the cache's causal one
            hidden = self.showo.model(input_ids=token[:, None], cache=cache, use_cache=True).last_hidden_state[:, -1]
        return torch.stack(tokens, dim=1)

    def sample_captions(self, inputs: torch.Tensor, n: int, gen: GenerationConfig) -> list[list[str]]:
        """`n` captions per image, sampled after the caption prompt until <eos> or `caption_max_tokens`."""
        if n < 1:
            raise UsageError(f"sample_captions: n must be at least 1, got {n}")
        codes = self._check_codes(inputs)
        prompt = self._encode(self.cfg.caption_prompt)
        budget = min(self.caption_max_tokens, self.showo.config.max_position_embeddings - self.n_image_tokens - 5
                     - len(prompt))
        generator = torch.Generator().manual_seed(gen.seed)
        with self.sampling():
            ids = self.mmu_ids(codes, [prompt] * len(codes))
            out = self.continue_text(ids, budget, gen.temperature, gen.top_k, generator, n=n) if len(ids) else None
        captions = [self._decode_text(row) for row in out.tolist()] if out is not None else []
        return [captions[i * n : (i + 1) * n] for i in range(len(inputs))]

    def _decode_text(self, ids: list[int]) -> str:
        if self.cfg.eos_id in ids:
            ids = ids[: ids.index(self.cfg.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ----- generation -----------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], n: int, gen: GenerationConfig) -> torch.Tensor:
        """(len(prompts) * n, L) codes, the n samples of a prompt adjacent: MaskGIT with guidance."""
        if n < 1:
            raise UsageError(f"generate: n must be at least 1, got {n}")
        return self.generate_ids([self._encode(p) for p in prompts for _ in range(n)], gen)

    def generate_ids(self, prompts: list[list[int]], gen: GenerationConfig, trace: list | None = None) -> torch.Tensor:
        """MaskGIT over prompt token ids, one image per prompt (the unconditional branch is [])."""
        if gen.steps < 1:
            raise UsageError(f"generation steps must be at least 1, got {gen.steps}")
        w = gen.guidance
        rows = prompts + [[]] * len(prompts) if w else prompts
        p = self.prefix_len
        cache = DynamicCache(config=self.showo.config)

        def guided(codes: torch.Tensor) -> torch.Tensor:
            # Text rows never see the image, so the text slot's keys and values are computed once
            # (below) and every step runs only <|soi|> image <|eoi|> against them.
            ids = self.t2i_ids(rows, codes.repeat(2, 1) if w else codes)
            mask = additive_mask(self.t2i_allowed(ids)[:, p:], self.dtype)
            hidden = self.showo.model(input_ids=ids[:, p:], attention_mask=mask, cache=cache,
                                      use_cache=True).last_hidden_state
            cache.crop(-(self.n_image_tokens + 2))  # back to the text slot
            logits = self.code_logits(hidden[:, 1:-1])
            return cfg_logits(*logits.chunk(2), w) if w else logits

        generator = torch.Generator().manual_seed(gen.seed)
        with self.sampling():
            ids = self.t2i_ids(rows, torch.full((len(rows), self.n_image_tokens), MASKED, device=self.device))[:, :p]
            self.showo.model(input_ids=ids, attention_mask=additive_mask(self.t2i_allowed(ids), self.dtype), cache=cache,
                             use_cache=True)
            if self.cfg.sampler == "official":
                return official_maskgit_decode(guided, len(prompts), self.n_image_tokens, gen.steps, gen.temperature,
                                               generator, self.device, trace)
            return maskgit_decode(guided, len(prompts), self.n_image_tokens, gen.steps, gen.temperature, generator,
                                  self.device, trace)

    def generate_trajectory(self, prompts: Sequence[str], n: int, gen: GenerationConfig) -> Trajectory:
        """`generate`'s images (the same codes) with the decoding trajectory that reached them (either sampler)."""
        if n < 1:
            raise UsageError(f"generate: n must be at least 1, got {n}")
        trace: list = []
        codes = self.generate_ids([self._encode(p) for p in prompts for _ in range(n)], gen, trace)
        return Trajectory.from_trace(trace, codes)

    def trajectory_logps(self, prompts: Sequence[str], trajectory: Trajectory, estimator: TrajectoryEstimator) -> LogProbs:
        """log π(codes | prompt) along the recorded trajectory (`maskgit.trajectory_logps`) over the code
        logits the samplers draw from; "" is the unconditional prompt."""
        self._check_codes(trajectory.codes)
        encode = lambda texts: [self._encode(t) if t else [] for t in texts]  # noqa: E731
        return trajectory_logps(lambda texts, codes: self.code_logits(self._image_hidden(encode(texts), codes)), prompts,
                                trajectory, estimator)

    def image_logps(self, prompts: Sequence[str], tokens: torch.Tensor, estimator: ImageEstimator,
                    seeds: Sequence[int]) -> LogProbs:
        """log π(codes | prompt) by a masked Monte-Carlo estimate; "" is the unconditional prompt."""
        if len(prompts) != len(tokens) or len(seeds) != len(tokens):
            raise UsageError(f"image_logps: {len(prompts)} prompts, {len(tokens)} token rows, {len(seeds)} seeds")
        return self.image_logps_ids([self._encode(p) for p in prompts], tokens, estimator, seeds)

    def image_logps_ids(self, prompts: list[list[int]], tokens: torch.Tensor, estimator: ImageEstimator,
                        seeds: Sequence[int]) -> LogProbs:
        codes = self._check_codes(tokens)
        if isinstance(estimator, ExactEstimator):
            raise UsageError("Show-o predicts image tokens by masked modelling: its image log-probs are estimated "
                             "(the showo-official or masked estimator), not exact")
        if isinstance(estimator, OfficialMaskedEstimator):
            return self._official_logps(prompts, codes, estimator, seeds)
        return masked_logps(lambda p, c: self.code_logits(self._image_hidden(list(p), c)), prompts, codes,
                            estimator, seeds)

    def _official_logps(self, prompts: list[list[int]], codes: torch.Tensor, estimator: OfficialMaskedEstimator,
                        seeds: Sequence[int]) -> LogProbs:
        masks, ratios = official_masks(seeds, estimator.samples, codes.shape[1])
        masks, ratios = masks.to(self.device), ratios.to(self.device)
        b, k = masks.shape[:2]
        flat_masks = masks.reshape(b * k, -1)
        flat_codes = codes.repeat_interleave(k, dim=0)
        ids = self.t2i_ids([p for p in prompts for _ in range(k)], torch.where(flat_masks, MASKED, flat_codes))
        hidden = self.hidden(ids, self.t2i_allowed(ids))[:, self.prefix_len :]  # <|soi|> image <|eoi|>
        truth = self.t2i_ids([[]] * len(ids), flat_codes)[:, self.prefix_len :]
        counted = F.pad(flat_masks, (1, 1), value=True)  # the <|soi|> and <|eoi|> positions count, as officially
        logp = self.showo.lm_head(hidden).float().log_softmax(-1).gather(-1, truth[..., None])[..., 0]
        per_draw = (logp * counted).sum(-1).view(b, k)
        counts = masks.sum(-1).float()
        if estimator.weighting == "ratio":
            per_draw, counts = per_draw / ratios, torch.full_like(counts, codes.shape[1])
        return LogProbs(per_draw.mean(-1), counts.mean(-1))

    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        """(N, S, S, 3) uint8 through the MAGVIT-v2 decoder."""
        codes = self._check_codes(tokens)
        with torch.no_grad():
            return to_uint8(self.vq_model.decode(codes))

    def _check_codes(self, tokens: torch.Tensor | np.ndarray) -> torch.Tensor:
        tokens = torch.as_tensor(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != self.n_image_tokens:
            raise UsageError(f"image tokens must be (N, {self.n_image_tokens}) for this Show-o model, got "
                             f"{tuple(tokens.shape)}")
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise UsageError(f"image tokens must be integer ids, got {tokens.dtype}")
        if len(tokens) and not tokens.is_meta and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.codebook_size):
            raise UsageError(f"image token ids must lie in [0, {self.cfg.codebook_size}), got "
                             f"{int(tokens.min())}..{int(tokens.max())}")
        return tokens.to(self.device, torch.long)


def _listing(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


