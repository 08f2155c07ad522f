"""The transformer of the built-in unified model, nanoGPT-style: one stack over text and image tokens.

Attention is steered entirely by a float additive mask (0 = attend, -inf = not), built by
`omni_attention_mask`: causal over the sequence, bidirectional inside the image block (Show-o's
omni-attention), padding never attended. A boolean 4-D mask would be silently wrong with some
attention kernels, so the mask is always float.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TransformerConfig:
    """Sizes of the transformer."""

    vocab_size: int = 80
    max_len: int = 40
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def omni_attention_mask(pad: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """(B, T) padding and image-position flags -> (B, 1, T, T) float mask, 0 or -inf.

    Query i may attend key j if j is not padding and (j <= i, or both lie in the image block).
    Every query attends itself, so no row is all -inf (which would give NaN).
    """
    t = pad.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=pad.device).tril()
    allowed = causal | (image[:, :, None] & image[:, None, :])
    allowed = (allowed & ~pad[:, None, :]) | torch.eye(t, dtype=torch.bool, device=pad.device)
    mask = torch.zeros(allowed.shape, dtype=torch.float32, device=pad.device)
    return mask.masked_fill(~allowed, float("-inf"))[:, None]


class SelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: tuple | None,
                extend: bool = True) -> tuple[torch.Tensor, tuple | None]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        scale = 1.0 / math.sqrt(q.shape[-1])
        # written out: for these short sequences it runs ~3x faster on CPU than the fused kernel's backward
        if cache is None:
            att = (q @ k.transpose(-2, -1)) * scale
        else:  # the new tokens attend the cached keys and their own, without copying the cache
            att = torch.cat([q @ cache[0].transpose(-2, -1), q @ k.transpose(-2, -1)], dim=-1) * scale
        if mask is not None:
            att = att + mask.to(att.dtype)
        att = F.dropout(F.softmax(att, dim=-1), self.dropout, self.training)
        if cache is None:
            y, kv = att @ v, (k, v)
        else:
            cached = cache[0].shape[2]
            y = att[..., :cached] @ cache[1] + att[..., cached:] @ v
            kv = (torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)) if extend else None
        return self.proj(y.transpose(1, 2).reshape(b, t, d)), kv


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: tuple | None,
                extend: bool = True) -> tuple[torch.Tensor, tuple | None]:
        h, kv = self.attn(self.ln1(x), mask, cache, extend)
        x = x + h
        return x + self.mlp(self.ln2(x)), kv


class Transformer(nn.Module):
    """Token + position embeddings, blocks, a final norm and a head over the whole vocabulary."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None = None, start: int = 0,
        extend_cache: bool = True,
    ) -> tuple[torch.Tensor, KVCache | None]:
        """tokens (B, T) at positions start..start+T-1 -> logits (B, T, V) and the updated cache
        (None with `extend_cache=False`: a caller that reuses a fixed prefix saves the copies)."""
        t = tokens.shape[1]
        if start + t > self.cfg.max_len:
            raise ValueError(f"sequence of {start + t} tokens exceeds max_len {self.cfg.max_len}")
        x = self.tok(tokens) + self.pos(torch.arange(start, start + t, device=tokens.device))
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, mask, None if cache is None else cache[i], extend_cache)
            new_cache.append(kv)
        return self.head(self.ln(x)), new_cache if extend_cache or cache is None else None
