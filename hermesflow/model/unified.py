"""The built-in unified model: one transformer that captions, answers questions and draws images.

Two sequence layouts share one vocabulary (text words, then 19 image codes) and one stack:

    text-to-image  [T2I] prompt(text_len, right-padded) [SOI] image(16) [EOI]
    understanding  [MMU] [SOI] image(16) [EOI] text(text_len, right-padded)

Image tokens are predicted by masked modelling (MaskGIT, cosine schedule) with classifier-free
guidance from an empty prompt; text is predicted autoregressively. Inputs and outputs at the
public boundary are world images as (N, 32, 32, 3) uint8 arrays, strings, and image token ids.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from hermesflow.errors import UsageError
from hermesflow.io import atomic_write_json
from hermesflow.model.tokenizers import SPECIALS, ImageTokenizer, TextTokenizer, world_words
from hermesflow.model.transformer import Transformer, TransformerConfig, omni_attention_mask

WEIGHTS, CONFIG = "model.safetensors", "config.json"


@dataclass
class UnifiedConfig:
    """Everything needed to rebuild the model: transformer sizes, vocabulary, text slot length."""

    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    text_len: int = 16
    words: list[str] = field(default_factory=world_words)


def mask_ratio(u: torch.Tensor) -> torch.Tensor:
    """MaskGIT's cosine schedule: the share of image tokens masked at uniform time u in [0, 1)."""
    return torch.cos(math.pi / 2 * u)


def cfg_logits(cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Show-o's classifier-free guidance: (1 + w) * cond - w * uncond; w = 0 is plain conditional."""
    return (1 + guidance) * cond - guidance * uncond


class UnifiedModel(nn.Module):
    """The built-in Show-o-style unified model (implements the Backbone protocol)."""

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
        self._text_only = torch.full((self.net.cfg.vocab_size,), float("-inf"))
        self._text_only[len(SPECIALS) : self.image_offset] = 0.0  # words and [EOS], never other specials
        self._text_only[self.text.eos] = 0.0

    # ----- building sequences -------------------------------------------------------------------

    def encode_text(self, text: str, limit: int | None = None) -> list[int]:
        ids = self.text.encode(text)
        limit = limit or self.cfg.text_len
        if len(ids) > limit:
            raise UsageError(f"text {text!r} has {len(ids)} words; the model's limit is {limit}")
        return ids

    def t2i_batch(self, prompts: list[list[int]], image_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, T) and their float attention mask for text-to-image sequences.
        `image_tokens` are codes in [0, 19), or -1 for [MASK]."""
        b, p = len(prompts), self.cfg.text_len
        tokens = torch.full((b, self.seq_len), self.text.pad, dtype=torch.long)
        tokens[:, 0] = self.text.t2i
        for i, ids in enumerate(prompts):
            tokens[i, 1 : 1 + len(ids)] = torch.tensor(ids, dtype=torch.long)
        tokens[:, 1 + p] = self.text.soi
        s = self.t2i_image_start
        tokens[:, s : s + self.images.n_tokens] = self._image_ids(image_tokens)
        tokens[:, -1] = self.text.eoi
        image = torch.zeros(tokens.shape, dtype=torch.bool)
        image[:, s : s + self.images.n_tokens] = True
        return tokens, omni_attention_mask(tokens == self.text.pad, image)

    def mmu_batch(self, image_tokens: torch.Tensor, texts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, T) and mask for understanding sequences: image, then `texts` (<= text_len)."""
        b = len(texts)
        tokens = torch.full((b, self.seq_len), self.text.pad, dtype=torch.long)
        tokens[:, 0], tokens[:, 1] = self.text.mmu, self.text.soi
        tokens[:, 2 : 2 + self.images.n_tokens] = self._image_ids(image_tokens)
        tokens[:, 2 + self.images.n_tokens] = self.text.eoi
        for i, ids in enumerate(texts):
            if len(ids) > self.cfg.text_len:
                raise UsageError(f"text of {len(ids)} tokens exceeds the model's limit of {self.cfg.text_len}")
            tokens[i, self.mmu_text_start : self.mmu_text_start + len(ids)] = torch.tensor(ids, dtype=torch.long)
        image = torch.zeros(tokens.shape, dtype=torch.bool)
        image[:, 2 : 2 + self.images.n_tokens] = True
        return tokens, omni_attention_mask(tokens == self.text.pad, image)

    def _image_ids(self, image_tokens: torch.Tensor) -> torch.Tensor:
        image_tokens = self.check_codes(image_tokens, allow_masked=True)
        return torch.where(image_tokens < 0, self.text.mask, image_tokens + self.image_offset)

    def check_codes(self, codes: torch.Tensor, allow_masked: bool = False) -> torch.Tensor:
        """Image token ids as a (N, 16) long tensor in [0, 19) (-1 = masked, where allowed)."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.ndim != 2 or codes.shape[1] != self.images.n_tokens:
            raise UsageError(f"expected image tokens of shape (N, {self.images.n_tokens}), got {tuple(codes.shape)}")
        low = -1 if allow_masked else 0
        if ((codes < low) | (codes >= self.images.codebook_size)).any():
            raise UsageError(f"image tokens must lie in [{low}, {self.images.codebook_size}), got {codes.min()}..{codes.max()}")
        return codes

    def image_logits(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, 16, 19) over image codes at the image positions of t2i sequences."""
        logits, _ = self.net(tokens, mask)
        s = self.t2i_image_start
        return logits[:, s : s + self.images.n_tokens, self.image_offset :]

    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.images.encode(_check_images(images)))

    def decode(self, tokens: torch.Tensor | np.ndarray) -> np.ndarray:
        """Image token ids (N, 16) -> images (N, 32, 32, 3) uint8."""
        return self.images.decode(np.asarray(torch.as_tensor(tokens).cpu()))

    # ----- log-probabilities --------------------------------------------------------------------

    def text_logprob(
        self, image_tokens: torch.Tensor, prefixes: list[list[int]], targets: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probs (B,) of each target given image and prefix, and target lengths (B,)."""
        texts = [p + t for p, t in zip(prefixes, targets)]
        tokens, mask = self.mmu_batch(image_tokens, texts)
        logits, _ = self.net(tokens, mask)
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, tokens[:, 1:, None])[..., 0]
        weight = torch.zeros_like(logp)
        for i, (p, t) in enumerate(zip(prefixes, targets)):
            first = self.mmu_text_start + len(p) - 1  # logits at position j predict token j + 1
            weight[i, first : first + len(t)] = 1.0
        return (logp * weight).sum(-1), weight.sum(-1)

    def text_logprob_shared_image(
        self, image_tokens: torch.Tensor, owners: list[int], prefixes: list[list[int]], targets: list[list[int]]
    ) -> torch.Tensor:
        """`text_logprob` when many texts share few images: each image's part of the sequence
        ([MMU] [SOI] image [EOI]) runs once, and texts attend its cached keys and values.
        `owners[i]` is the row of `image_tokens` that text i is about. Summed log-probs (B,)."""
        p = self.mmu_text_start
        tokens, mask = self.mmu_batch(image_tokens, [[] for _ in range(len(image_tokens))])
        image_logits, cache = self.net(tokens[:, :p], mask[:, :, :p, :p])
        owner = torch.tensor(owners)
        texts = [a + b for a, b in zip(prefixes, targets)]
        length = max(len(t) for t in texts)
        text = torch.full((len(texts), length), self.text.pad, dtype=torch.long)
        for i, t in enumerate(texts):
            text[i, : len(t)] = torch.tensor(t)
        causal = torch.ones(length, length, dtype=torch.bool).tril() & (text != self.text.pad)[:, None, :]
        causal |= torch.eye(length, dtype=torch.bool)
        allowed = torch.cat([torch.ones(len(texts), length, p, dtype=torch.bool), causal], dim=2)
        text_mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))[:, None]
        text_logits, _ = self.net(text, text_mask, [(k[owner], v[owner]) for k, v in cache], start=p)
        # the image part's last position ([EOI]) predicts the first text token
        logits = torch.cat([image_logits[owner, -1:], text_logits[:, :-1]], dim=1)
        logp = F.log_softmax(logits.float(), dim=-1).gather(-1, text[..., None])[..., 0]
        weight = torch.zeros_like(logp)
        for i, (a, b) in enumerate(zip(prefixes, targets)):
            weight[i, len(a) : len(a) + len(b)] = 1.0
        return (logp * weight).sum(-1)

    def caption_logprob(self, images: np.ndarray | torch.Tensor, captions: list[str], average: bool = False) -> torch.Tensor:
        """log π(caption | image), summed over the caption's tokens and [EOS] (or their mean)."""
        image_tokens = self._as_image_tokens(images)
        targets = [self.encode_text(c, self.cfg.text_len - 1) + [self.text.eos] for c in captions]
        total, count = self.text_logprob(image_tokens, [[] for _ in captions], targets)
        return total / count if average else total

    def image_logprob(
        self,
        prompts: list[str],
        tokens: torch.Tensor,
        seeds: torch.Tensor | list[int],
        samples: int = 1,
        ratio_weighting: bool = False,
        average: bool = False,
    ) -> torch.Tensor:
        """Monte-Carlo estimate of log π(image tokens | prompt) for a masked generator, (B,).

        For each of `samples` draws, a mask ratio is drawn from the cosine schedule and that share
        of positions is masked; the log-probs of the true tokens at masked positions are summed.
        The draws are made by a generator seeded with `seeds[b]` alone, so two calls with the same
        seeds (winner and loser, policy and reference) use the same masks. `ratio_weighting`
        divides each draw by its ratio; `average` divides by the number of masked tokens instead.
        """
        tokens = self.check_codes(tokens)
        masks, ratios = self.draw_masks(seeds, samples)  # (B, K, 16), (B, K)
        prompt_ids = [self.encode_text(p) if p else [] for p in prompts]  # "" = the unconditional prompt
        b, k = masks.shape[:2]
        flat_prompts = [ids for ids in prompt_ids for _ in range(k)]
        flat_tokens = tokens.repeat_interleave(k, dim=0)
        flat_masks = masks.reshape(b * k, -1)
        seq, attn = self.t2i_batch(flat_prompts, torch.where(flat_masks, -1, flat_tokens))
        logp = F.log_softmax(self.image_logits(seq, attn).float(), dim=-1)
        logp = logp.gather(-1, flat_tokens[..., None])[..., 0] * flat_masks
        per_draw = logp.sum(-1).view(b, k)
        if ratio_weighting:
            per_draw = per_draw / ratios
        elif average:
            per_draw = per_draw / masks.sum(-1)
        return per_draw.mean(-1)

    def draw_masks(self, seeds: torch.Tensor | list[int], samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example, `samples` cosine-schedule masks drawn from a generator seeded by its seed."""
        n = self.images.n_tokens
        masks, ratios = [], []
        for seed in torch.as_tensor(seeds).tolist():
            g = torch.Generator().manual_seed(int(seed))
            r = mask_ratio(torch.rand(samples, generator=g))
            count = torch.clamp(torch.ceil(r * n), 1, n).long()
            order = torch.stack([torch.randperm(n, generator=g) for _ in range(samples)])
            masks.append(order < count[:, None])
            ratios.append(count.float() / n)
        return torch.stack(masks), torch.stack(ratios)

    # ----- understanding ------------------------------------------------------------------------

    @torch.inference_mode()
    def answer(
        self, images: np.ndarray | torch.Tensor, questions: list[str], choices: list[list[str]], batch_size: int = 512
    ) -> list[str]:
        """Multiple choice: the choice with the highest log-likelihood as the answer to the question."""
        image_tokens = self._as_image_tokens(images)
        if not (len(image_tokens) == len(questions) == len(choices)):
            raise UsageError(f"answer: {len(image_tokens)} images, {len(questions)} questions, {len(choices)} choice lists")
        rows, prefixes, targets = [], [], []
        for i, (q, options) in enumerate(zip(questions, choices)):
            prefix = self.encode_text(q, self.cfg.text_len - 2) + [self.text.ans]
            for c in options:
                rows.append(i)
                prefixes.append(prefix)
                targets.append(self.encode_text(c) + [self.text.eos])
        if not rows:
            return []
        scores = []
        for s in range(0, len(rows), batch_size):
            unique, owners = torch.unique(image_tokens[rows[s : s + batch_size]], dim=0, return_inverse=True)
            scores.append(self.text_logprob_shared_image(unique, owners.tolist(), prefixes[s : s + batch_size], targets[s : s + batch_size]))
        scores = torch.cat(scores)
        answers, s = [], 0
        for options in choices:
            answers.append(options[int(scores[s : s + len(options)].argmax())])
            s += len(options)
        return answers

    @torch.inference_mode()
    def sample_captions(
        self,
        images: np.ndarray | torch.Tensor,
        n: int = 1,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 0,
        use_cache: bool = True,
    ) -> list[list[str]]:
        """`n` captions per image, sampled token by token (temperature 0 = greedy)."""
        image_tokens = self._as_image_tokens(images).repeat_interleave(n, dim=0)
        g = torch.Generator().manual_seed(seed)
        b = len(image_tokens)
        prefix, mask = self.mmu_batch(image_tokens, [[] for _ in range(b)])
        prefix, mask = prefix[:, : self.mmu_text_start], mask[:, :, : self.mmu_text_start, : self.mmu_text_start]
        out = torch.full((b, 0), self.text.pad, dtype=torch.long)
        done = torch.zeros(b, dtype=torch.bool)
        logits, cache = self.net(prefix, mask)
        for step in range(self.cfg.text_len):
            nxt = self._sample_text(logits[:, -1], temperature, top_k, g)
            nxt = torch.where(done, self.text.eos, nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == self.text.eos
            if done.all() or step == self.cfg.text_len - 1:
                break
            if use_cache:
                logits, cache = self.net(nxt[:, None], None, cache, start=self.mmu_text_start + step)
            else:
                seq, m = self.mmu_batch(image_tokens, out.tolist())
                logits, _ = self.net(seq[:, : self.mmu_text_start + step + 1], m[:, :, : self.mmu_text_start + step + 1, : self.mmu_text_start + step + 1])
        captions = [self.text.decode(row) for row in out.tolist()]
        return [captions[i * n : (i + 1) * n] for i in range(b // n)]

    def _sample_text(self, logits: torch.Tensor, temperature: float, top_k: int | None, g: torch.Generator) -> torch.Tensor:
        logits = logits.float() + self._text_only
        if temperature <= 0:
            return logits.argmax(-1)  # greedy
        logits = logits / temperature
        if top_k:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=g)[:, 0]

    # ----- generation ---------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        steps: int = 10,
        guidance: float = 2.0,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> torch.Tensor:
        """MaskGIT decoding with classifier-free guidance: (len(prompts) * n, 16) image token ids,
        the n samples of each prompt adjacent. All prompts x n samples decode in one batch."""
        prompt_ids = [ids for ids in (self.encode_text(p) for p in prompts) for _ in range(n)]
        b, length = len(prompt_ids), self.images.n_tokens
        g = torch.Generator().manual_seed(seed)
        codes = torch.full((b, length), -1, dtype=torch.long)
        context = self._prompt_context(prompt_ids, guidance)
        for step in range(steps):
            logits = self._guided_logits(context, codes, guidance) / max(temperature, 1e-6)
            probs = F.softmax(logits.float(), dim=-1)
            if temperature > 0:
                sampled = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=g).view(b, length)
            else:
                sampled = probs.argmax(-1)
            confidence = probs.gather(-1, sampled[..., None])[..., 0].log()
            masked = codes < 0
            sampled = torch.where(masked, sampled, codes)
            # MaskGIT: keep the most confident, re-mask the rest; noise on confidence anneals to 0
            keep_masked = int(math.floor(length * mask_ratio(torch.tensor((step + 1) / steps))))
            if temperature > 0:
                gumbel = -torch.log(-torch.log(torch.rand(confidence.shape, generator=g).clamp_min(1e-20)))
                confidence = confidence + temperature * (1 - (step + 1) / steps) * gumbel
            confidence = confidence.masked_fill(~masked, float("inf"))
            codes = sampled
            if keep_masked > 0:
                lowest = confidence.topk(keep_masked, dim=-1, largest=False).indices
                codes = codes.scatter(1, lowest, -1)
        return codes

    def _prompt_context(self, prompt_ids: list[list[int]], guidance: float) -> tuple:
        """Keys and values of the prompt part, computed once per `generate`: the prompt never
        attends the image (causal), so only the image block is recomputed at each step. With
        guidance, the empty prompts of the unconditional branch follow the conditional ones."""
        rows = prompt_ids + ([[] for _ in prompt_ids] if guidance else [])
        tokens, mask = self.t2i_batch(rows, torch.full((len(rows), self.images.n_tokens), -1))
        s, e = self.t2i_image_start, self.t2i_image_start + self.images.n_tokens
        _, cache = self.net(tokens[:, :s], mask[:, :, :s, :s])
        return cache, mask[:, :, s:e, :e]

    def _guided_logits(self, context: tuple, codes: torch.Tensor, guidance: float) -> torch.Tensor:
        """Image-code logits (B, 16, 19) at the current codes, guided by (1 + w) cond - w uncond."""
        cache, block_mask = context
        block = self._image_ids(torch.cat([codes, codes]) if guidance else codes)
        logits = self.net(block, block_mask, cache, start=self.t2i_image_start)[0][..., self.image_offset :]
        if not guidance:
            return logits
        cond, uncond = logits.chunk(2)
        return cfg_logits(cond, uncond, guidance)

    # ----- saving and loading -------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """Weights as safetensors and the config as JSON; no pickle anywhere."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
        tmp = directory / f".{WEIGHTS}.tmp"
        save_file(state, str(tmp))
        tmp.replace(directory / WEIGHTS)
        atomic_write_json(directory / CONFIG, {"model_type": "hermesflow-unified", **self.cfg.__dict__})

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "UnifiedModel":
        directory = Path(directory)
        for name in (CONFIG, WEIGHTS):
            if not (directory / name).is_file():
                raise UsageError(f"model folder {directory}: {name} not found (expected a save_pretrained folder)")
        try:
            raw = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"model folder {directory}: {CONFIG} is not valid JSON ({e})") from None
        if raw.pop("model_type", None) != "hermesflow-unified":
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
        return model

    def _as_image_tokens(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Images (N, 32, 32, 3) uint8 arrays are tokenized; (N, 16) token tensors pass through."""
        if isinstance(images, torch.Tensor):
            return images.long()
        return self.encode_images(images)


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        raise UsageError(f"expected images as a (N, 32, 32, 3) uint8 array, got {images.dtype} {images.shape}")
    return images
