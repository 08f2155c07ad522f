"""The built-in unified model: one transformer that captions, answers questions and draws images.

Two sequence layouts share one vocabulary (text words, then 19 image codes) and one stack:

    text-to-image  [T2I] prompt(text_len, right-padded) [SOI] image(16) [EOI]
    understanding  [MMU] [SOI] image(16) [EOI] text(text_len, right-padded)

Image tokens are predicted by masked modelling (MaskGIT, cosine schedule) with classifier-free
guidance from an empty prompt; text is predicted autoregressively. It reads and draws the shapes
world's 32x32 images through an exact patch palette (one token per grid cell); images of the world
drawn larger (a multiple of 32) are reduced to 32x32 by averaging each block of pixels.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from hermesflow.backbones.base import (
    BackboneBase,
    GenerationConfig,
    LogProbs,
    MaskedEstimator,
    check_answers,
    check_choices,
    check_rgb,
    choice_scores,
    per_question,
    sample_token,
)
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
from hermesflow.testbed.tokenizers import SPECIALS, ImageTokenizer, TextTokenizer, split_words, world_words
from hermesflow.testbed.transformer import KVCache, Transformer, TransformerConfig, omni_attention_mask
from hermesflow.world.render import to_world_size
from hermesflow.world.scenes import IMAGE_SIZE

WEIGHTS, CONFIG = "model.safetensors", "config.json"
MODEL_TYPE = "hermesflow-unified"


@dataclass
class UnifiedConfig:
    """Everything needed to rebuild the model: transformer sizes, vocabulary, text slot length."""

    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    text_len: int = 16
    words: list[str] = field(default_factory=world_words)


class UnifiedModel(BackboneBase):
    """The built-in Show-o-style unified model (a Backbone)."""

    model_type = MODEL_TYPE
    # said under its refusals of data: what it reads, and the way to real images
    fit_hint: ClassVar[str] = ("the built-in model reads only the shapes world's words and images; for your own photos and "
                               "captions, give --model a Janus, Janus-Pro or Show-o folder (docs/models.md)")
    lora_targets = ("qkv", "proj", "fc")
    image_size = IMAGE_SIZE

    def __init__(self, cfg: UnifiedConfig):
        super().__init__()
        self.cfg = cfg
        self.text = TextTokenizer(cfg.words)
        self.images = ImageTokenizer()
        self.image_offset = len(self.text)  # image code c has vocabulary id image_offset + c
        self.t2i_image_start = 2 + cfg.text_len
        self.mmu_text_start = 3 + self.images.n_tokens
        self.seq_len = 3 + cfg.text_len + self.images.n_tokens
        self.net = Transformer(
            TransformerConfig(
                vocab_size=self.image_offset + self.images.codebook_size,
                max_len=self.seq_len,
                d_model=cfg.d_model,
                n_layers=cfg.n_layers,
                n_heads=cfg.n_heads,
            )
        )
        text_only = torch.full((self.net.cfg.vocab_size,), float("-inf"))
        text_only[len(SPECIALS) : self.image_offset] = 0.0  # words and [EOS], never other specials
        text_only[self.text.eos] = 0.0
        self.register_buffer("text_only", text_only, persistent=False)

    def trainable_module(self) -> Transformer:
        return self.net

    def shard_units(self) -> list[nn.Module]:
        return list(self.net.blocks)

    def default_estimator(self) -> MaskedEstimator:
        return MaskedEstimator()

    # ----- what the model can represent ---------------------------------------------------------

    def fit_problems(self, image: np.ndarray | None, texts: Sequence[str]) -> list[str]:
        problems = []
        for text in texts:
            words = split_words(text)
            unknown = sorted({w for w in words if w not in self.text.ids})
            if unknown:
                problems.append(f"text {text!r} has words the built-in model does not know: {unknown}")
            elif not words:
                problems.append(f"text {text!r} has no words")
            elif len(words) > self.cfg.text_len - 2:  # room for [ANS]/[EOS] after a question or caption
                problems.append(f"text {text!r} has {len(words)} words; the built-in model's limit is {self.cfg.text_len - 2}")
        if image is not None:
            problems += self._image_problems(np.asarray(image))
        return problems

    def _image_problems(self, image: np.ndarray) -> list[str]:
        h, w = image.shape[:2]
        if h != w or h % IMAGE_SIZE:
            return [f"image is {w}x{h}; the built-in model reads square shapes-world images whose side is a multiple of {IMAGE_SIZE}"]
        small = to_world_size(image)
        codes = self.images.encode(small[None])
        changed = int((self.images.decode(codes)[0] != small).any(-1).sum())
        if changed > small.shape[0] * small.shape[1] // 20:
            return [f"the built-in image tokenizer cannot represent this image ({changed} of {IMAGE_SIZE * IMAGE_SIZE} "
                    f"pixels change in encode/decode): it reads only shapes-world images"]
        return []

    # ----- building sequences -------------------------------------------------------------------

    def encode_text(self, text: str, limit: int | None = None) -> list[int]:
        ids = self.text.encode(text)
        limit = limit or self.cfg.text_len
        if len(ids) > limit:
            raise UsageError(f"text {text!r} has {len(ids)} words; the model's limit is {limit}")
        return ids

    @staticmethod
    def _token_rows(rows: list[list[int]], start: int, tokens: torch.Tensor) -> None:
        """Write each row of ids into `tokens` from column `start` (on the tokens' device)."""
        for i, ids in enumerate(rows):
            tokens[i, start : start + len(ids)] = torch.tensor(ids, dtype=torch.long, device=tokens.device)

    def t2i_batch(self, prompts: list[list[int]], image_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, T) and their float attention mask for text-to-image sequences.
        `image_tokens` are codes in [0, 19), or MASKED."""
        b, p = len(prompts), self.cfg.text_len
        tokens = torch.full((b, self.seq_len), self.text.pad, dtype=torch.long, device=self.device)
        tokens[:, 0] = self.text.t2i
        self._token_rows(prompts, 1, tokens)
        tokens[:, 1 + p] = self.text.soi
        s = self.t2i_image_start
        tokens[:, s : s + self.images.n_tokens] = self._image_ids(image_tokens)
        tokens[:, -1] = self.text.eoi
        image = torch.zeros(tokens.shape, dtype=torch.bool, device=self.device)
        image[:, s : s + self.images.n_tokens] = True
        return tokens, omni_attention_mask(tokens == self.text.pad, image)

    def mmu_batch(self, image_tokens: torch.Tensor, texts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, T) and mask for understanding sequences: image, then `texts` (<= text_len)."""
        b = len(texts)
        tokens = torch.full((b, self.seq_len), self.text.pad, dtype=torch.long, device=self.device)
        tokens[:, 0], tokens[:, 1] = self.text.mmu, self.text.soi
        tokens[:, 2 : 2 + self.images.n_tokens] = self._image_ids(image_tokens)
        tokens[:, 2 + self.images.n_tokens] = self.text.eoi
        for ids in texts:
            if len(ids) > self.cfg.text_len:
                raise UsageError(f"text of {len(ids)} tokens exceeds the model's limit of {self.cfg.text_len}")
        self._token_rows(texts, self.mmu_text_start, tokens)
        image = torch.zeros(tokens.shape, dtype=torch.bool, device=self.device)
        image[:, 2 : 2 + self.images.n_tokens] = True
        return tokens, omni_attention_mask(tokens == self.text.pad, image)

    def _image_ids(self, image_tokens: torch.Tensor) -> torch.Tensor:
        image_tokens = self.check_codes(image_tokens, allow_masked=True)
        return torch.where(image_tokens < 0, self.text.mask, image_tokens + self.image_offset)

    def check_codes(self, codes: torch.Tensor, allow_masked: bool = False) -> torch.Tensor:
        """Image token ids as a (N, 16) long tensor in [0, 19) (MASKED where allowed), on the model's device."""
        codes = torch.as_tensor(codes, dtype=torch.long).to(self.device)
        if codes.ndim != 2 or codes.shape[1] != self.images.n_tokens:
            raise UsageError(f"expected image tokens of shape (N, {self.images.n_tokens}), got {tuple(codes.shape)}")
        low = MASKED if allow_masked else 0
        if codes.device.type != "meta" and ((codes < low) | (codes >= self.images.codebook_size)).any():
            raise UsageError(f"image tokens must lie in [{low}, {self.images.codebook_size}), got {codes.min()}..{codes.max()}")
        return codes

    def image_logits(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, 16, 19) over image codes at the image positions of t2i sequences."""
        logits, _ = self.net(tokens, mask)
        s = self.t2i_image_start
        return logits[:, s : s + self.images.n_tokens, self.image_offset :]

    # ----- images in and out --------------------------------------------------------------------

    def prepare_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Images of the world at any multiple of 32 px -> their (N, 16) token ids."""
        small = np.stack([to_world_size(check_rgb(image)) for image in images]) if len(images) else np.zeros((0, 32, 32, 3), np.uint8)
        return torch.from_numpy(self.images.encode(small)).to(self.device)

    def prepare_generated(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.check_codes(tokens)  # the model reads its own tokens: no decode and re-encode

    def decode(self, tokens: torch.Tensor | np.ndarray) -> np.ndarray:
        """Image token ids (N, 16) -> images (N, 32, 32, 3) uint8."""
        return self.images.decode(np.asarray(torch.as_tensor(tokens).cpu()))

    # ----- log-probabilities --------------------------------------------------------------------

    def text_logprob(self, image_tokens: torch.Tensor, prefixes: list[list[int]], targets: list[list[int]]) -> LogProbs:
        """Summed log-probs (B,) of each target given image and prefix, and the target lengths."""
        texts = [p + t for p, t in zip(prefixes, targets)]
        tokens, mask = self.mmu_batch(image_tokens, texts)
        logits, _ = self.net(tokens, mask)
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, tokens[:, 1:, None])[..., 0]
        weight = torch.zeros_like(logp)
        for i, (p, t) in enumerate(zip(prefixes, targets)):
            first = self.mmu_text_start + len(p) - 1  # logits at position j predict token j + 1
            weight[i, first : first + len(t)] = 1.0
        return LogProbs((logp * weight).sum(-1), weight.sum(-1))

    def text_logprob_shared_image(
        self, image_tokens: torch.Tensor, owners: list[int], prefixes: list[list[int]], targets: list[list[int]]
    ) -> torch.Tensor:
        """`text_logprob` when many texts share few images: each image's part of the sequence
        ([MMU] [SOI] image [EOI]) runs once, and texts attend its cached keys and values.
        `owners[i]` is the row of `image_tokens` that text i is about. Summed log-probs (B,)."""
        p, device = self.mmu_text_start, self.device
        tokens, mask = self.mmu_batch(image_tokens, [[] for _ in range(len(image_tokens))])
        image_logits, cache = self.net(tokens[:, :p], mask[:, :, :p, :p])
        owner = torch.tensor(owners, device=device)
        texts = [a + b for a, b in zip(prefixes, targets)]
        length = max(len(t) for t in texts)
        text = torch.full((len(texts), length), self.text.pad, dtype=torch.long, device=device)
        self._token_rows(texts, 0, text)
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril() & (text != self.text.pad)[:, None, :]
        causal |= torch.eye(length, dtype=torch.bool, device=device)
        allowed = torch.cat([torch.ones(len(texts), length, p, dtype=torch.bool, device=device), causal], dim=2)
        text_mask = torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))[:, None]
        text_logits, _ = self.net(text, text_mask, [(k[owner], v[owner]) for k, v in cache], start=p, extend_cache=False)
        # the image part's last position ([EOI]) predicts the first text token
        logits = torch.cat([image_logits[owner, -1:], text_logits[:, :-1]], dim=1)
        logp = F.log_softmax(logits.float(), dim=-1).gather(-1, text[..., None])[..., 0]
        weight = torch.zeros_like(logp)
        for i, (a, b) in enumerate(zip(prefixes, targets)):
            weight[i, len(a) : len(a) + len(b)] = 1.0
        return (logp * weight).sum(-1)

    def caption_logps(self, inputs: torch.Tensor, captions: Sequence[str]) -> LogProbs:
        """log π(caption | image), summed over the caption's tokens and [EOS]."""
        targets = [self.encode_text(c, self.cfg.text_len - 1) + [self.text.eos] for c in captions]
        return self.text_logprob(inputs, [[] for _ in captions], targets)

    def image_logps(self, prompts: Sequence[str], tokens: torch.Tensor, estimator: MaskedEstimator,
                    seeds: Sequence[int]) -> LogProbs:
        """The masked Monte-Carlo estimate of log π(image tokens | prompt) (`maskgit.masked_logps`)."""
        if not isinstance(estimator, MaskedEstimator):
            raise UsageError(f"the built-in model is a masked generator; its image log-probs need a masked estimator, got {estimator.name}")
        return masked_logps(self._masked_logits, prompts, self.check_codes(tokens), estimator, seeds)

    def _masked_logits(self, prompts: Sequence[str], codes: torch.Tensor) -> torch.Tensor:
        prompt_ids = [self.encode_text(p) if p else [] for p in prompts]  # "" = the unconditional prompt
        return self.image_logits(*self.t2i_batch(prompt_ids, codes))

    # ----- understanding ------------------------------------------------------------------------

    def _question_ids(self, question: str) -> list[int]:
        return self.encode_text(question, self.cfg.text_len - 2) + [self.text.ans]

    def _answer_ids(self, answer: str) -> list[int]:
        return self.encode_text(answer) + [self.text.eos]

    def answer_logps(self, inputs: torch.Tensor, questions: Sequence[str], answers: Sequence[str]) -> LogProbs:
        """log π(answer [EOS] | image, question [ANS]), summed over the answer's tokens and [EOS]."""
        check_answers(inputs, questions, answers)
        return self.text_logprob(self.check_codes(inputs), [self._question_ids(q) for q in questions],
                                 [self._answer_ids(a) for a in answers])

    def choice_logps(self, inputs: torch.Tensor, questions: Sequence[str], choices: Sequence[Sequence[str]],
                     score: str = "sum", batch_size: int = 512) -> list[list[float]]:
        """log π(option [EOS] | image, question [ANS]) of each option of each question, summed over tokens
        (or their mean)."""
        check_choices(inputs, questions, choices)
        rows, prefixes, targets = [], [], []
        for i, (q, options) in enumerate(zip(questions, choices)):
            prefix = self._question_ids(q)
            for c in options:
                rows.append(i)
                prefixes.append(prefix)
                targets.append(self._answer_ids(c))
        if not rows:
            return []
        scores = []
        with self.sampling():
            for s in track(range(0, len(rows), batch_size), "batch"):
                unique, owners = torch.unique(inputs[rows[s : s + batch_size]], dim=0, return_inverse=True)
                total = self.text_logprob_shared_image(unique, owners.tolist(), prefixes[s : s + batch_size], targets[s : s + batch_size])
                count = torch.tensor([float(len(t)) for t in targets[s : s + batch_size]], device=total.device)
                scores.append(choice_scores(LogProbs(total, count), score))
        return per_question(torch.cat(scores), choices)

    def sample_captions(self, inputs: torch.Tensor, n: int, gen: GenerationConfig, use_cache: bool = True) -> list[list[str]]:
        """`n` captions per image, sampled token by token (temperature 0 = greedy)."""
        image_tokens = self.check_codes(inputs).repeat_interleave(n, dim=0)
        g = torch.Generator().manual_seed(gen.seed)
        b, p = len(image_tokens), self.mmu_text_start
        out = torch.full((b, 0), self.text.pad, dtype=torch.long, device=self.device)
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        with self.sampling():
            prefix, mask = self.mmu_batch(image_tokens, [[] for _ in range(b)])
            logits, cache = self.net(prefix[:, :p], mask[:, :, :p, :p])
            for step in track(range(self.cfg.text_len), "token"):
                nxt = self._sample_text(logits[:, -1], gen, g)
                nxt = torch.where(done, self.text.eos, nxt)
                out = torch.cat([out, nxt[:, None]], dim=1)
                done |= nxt == self.text.eos
                if done.all() or step == self.cfg.text_len - 1:
                    break
                if use_cache:
                    logits, cache = self.net(nxt[:, None], None, cache, start=p + step)
                else:
                    seq, m = self.mmu_batch(image_tokens, out.tolist())
                    logits, _ = self.net(seq[:, : p + step + 1], m[:, :, : p + step + 1, : p + step + 1])
        captions = [self.text.decode(row) for row in out.tolist()]
        return [captions[i * n : (i + 1) * n] for i in range(b // n)]

    def _sample_text(self, logits: torch.Tensor, gen: GenerationConfig, g: torch.Generator) -> torch.Tensor:
        return sample_token(logits.float() + self.text_only, gen.temperature, gen.top_k, g)

    # ----- generation ---------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], n: int, gen: GenerationConfig, trace: list | None = None) -> torch.Tensor:
        """MaskGIT decoding with classifier-free guidance: (len(prompts) * n, 16) image token ids,
        the n samples of each prompt adjacent. All prompts x n samples decode in one batch.
        `trace` receives the codes after each step (`maskgit_decode`)."""
        prompt_ids = [ids for ids in (self.encode_text(p) for p in prompts) for _ in range(n)]
        g = torch.Generator().manual_seed(gen.seed)
        with self.sampling():
            context = self._prompt_context(prompt_ids, gen.guidance)
            return maskgit_decode(lambda codes: self._guided_logits(context, codes, gen.guidance), len(prompt_ids),
                                  self.images.n_tokens, gen.steps, gen.temperature, g, self.device, trace)

    def generate_trajectory(self, prompts: Sequence[str], n: int, gen: GenerationConfig) -> Trajectory:
        """`generate`'s images (the same codes) with the decoding trajectory that reached them."""
        trace: list = []
        codes = self.generate(prompts, n, gen, trace)
        return Trajectory.from_trace(trace, codes)

    def trajectory_logps(self, prompts: Sequence[str], trajectory: Trajectory, estimator: TrajectoryEstimator) -> LogProbs:
        """log π(codes | prompt) along the recorded trajectory (`maskgit.trajectory_logps`)."""
        self.check_codes(trajectory.codes)
        return trajectory_logps(self._masked_logits, prompts, trajectory, estimator)

    def _prompt_context(self, prompt_ids: list[list[int]], guidance: float) -> tuple[KVCache, torch.Tensor]:
        """Keys and values of the prompt part, computed once per `generate`: the prompt never
        attends the image (causal), so only the image block is recomputed at each step. With
        guidance, the empty prompts of the unconditional branch follow the conditional ones."""
        rows = prompt_ids + ([[] for _ in prompt_ids] if guidance else [])
        masked = torch.full((len(rows), self.images.n_tokens), MASKED, device=self.device)
        tokens, mask = self.t2i_batch(rows, masked)
        s, e = self.t2i_image_start, self.t2i_image_start + self.images.n_tokens
        _, cache = self.net(tokens[:, :s], mask[:, :, :s, :s])
        return cache, mask[:, :, s:e, :e].to(self.dtype)  # cast once, not in every layer at every step

    def _guided_logits(self, context: tuple, codes: torch.Tensor, guidance: float) -> torch.Tensor:
        """Image-code logits (B, 16, 19) at the current codes, guided by (1 + w) cond - w uncond."""
        cache, block_mask = context
        block = self._image_ids(torch.cat([codes, codes]) if guidance else codes)
        logits = self.net(block, block_mask, cache, start=self.t2i_image_start, extend_cache=False)[0][..., self.image_offset :]
        if not guidance:
            return logits
        cond, uncond = logits.chunk(2)
        return cfg_logits(cond, uncond, guidance)

    # ----- saving and loading -------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """Weights as safetensors and the config as JSON; no pickle anywhere."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        tmp = directory / f".{WEIGHTS}.tmp"
        save_file(state, str(tmp))
        tmp.replace(directory / WEIGHTS)
        atomic_write_json(directory / CONFIG, {"model_type": MODEL_TYPE, **asdict(self.cfg)})

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype = torch.float32) -> "UnifiedModel":
        directory = Path(directory)
        for name in (CONFIG, WEIGHTS):
            if not (directory / name).is_file():
                raise UsageError(f"model folder {directory}: {name} not found (expected a save_pretrained folder)")
        try:
            raw = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"model folder {directory}: {CONFIG} is not valid JSON ({e})") from None
        if raw.pop("model_type", None) != MODEL_TYPE:
            raise UsageError(f"model folder {directory}: {CONFIG} is not a HermesFlow unified model config")
        known = set(UnifiedConfig.__dataclass_fields__)
        if set(raw) - known:
            raise UsageError(f"model folder {directory}: unknown config keys {sorted(set(raw) - known)}")
        model = cls(UnifiedConfig(**raw))
        try:
            state = load_file(str(directory / WEIGHTS))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise UsageError(f"model folder {directory}: {WEIGHTS} cannot be read ({e})") from None
        expected = model.net.state_dict()
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or extra:
            raise UsageError(f"model folder {directory}: weights do not match the config (missing {missing[:3]}, unexpected {extra[:3]})")
        for k, v in state.items():
            if v.shape != expected[k].shape:
                raise UsageError(f"model folder {directory}: tensor {k} has shape {tuple(v.shape)}, config expects {tuple(expected[k].shape)}")
        model.net.load_state_dict(state)
        return model.to(dtype)
