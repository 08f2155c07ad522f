"""MAGVIT-v2's image tokenizer as Show-o uses it (Yu et al., arXiv 2310.05737; Show-o, arXiv 2408.12528).

A convolutional encoder downsamples an image by 2 per level after the first, a lookup-free quantiser
(LFQ) keeps only the sign of each latent channel, and the signs read as a binary number are the
token: 13 channels give 8192 codes, the first channel the most significant bit. The decoder mirrors
the encoder back to pixels in [-1, 1]. Show-o's checkpoint (`showlab/magvitv2`): `ch` 128, encoder
`ch_mult` (1, 2, 2, 4, 4) with (4, 3, 4, 3, 4) residual blocks, decoder (1, 1, 2, 2, 4) with
(4, 4, 3, 4, 3): 16x down, so 256 px → 16x16 = 256 tokens and 512 px → 1024.

Parameter names follow the reference checkpoint (`encoder.down.0.block.0.conv1.weight`, ...), so its
weights load as they are. Images enter as Show-o's `image_transform` prepares them: the short side
resized to the model's side (bicubic), a centre crop, values mapped to [-1, 1].
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


@dataclass
class MagvitConfig:
    """Sizes of the tokenizer; defaults are Show-o's `showlab/magvitv2`."""

    ch: int = 128  # channels of the first level; GroupNorm uses 32 groups, so a multiple of 32
    encoder_ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4, 4])  # per level, x ch
    encoder_res_blocks: list[int] = field(default_factory=lambda: [4, 3, 4, 3, 4])  # per level
    decoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    decoder_res_blocks: list[int] = field(default_factory=lambda: [4, 4, 3, 4, 3])
    bits: int = 13  # LFQ latent channels: 2**bits codes

    def __post_init__(self) -> None:
        if len(self.encoder_ch_mult) != len(self.encoder_res_blocks):
            raise ValueError("MAGVIT-v2 config: encoder_ch_mult and encoder_res_blocks need one entry per level")
        if len(self.decoder_ch_mult) != len(self.decoder_res_blocks):
            raise ValueError("MAGVIT-v2 config: decoder_ch_mult and decoder_res_blocks need one entry per level")
        if len(self.encoder_ch_mult) != len(self.decoder_ch_mult):
            raise ValueError("MAGVIT-v2 config: encoder and decoder need the same number of levels")

    @property
    def codebook_size(self) -> int:
        return 2 ** self.bits

    @property
    def downsample(self) -> int:
        """Pixels per token side."""
        return 2 ** (len(self.encoder_ch_mult) - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_weights(cls, state: dict[str, torch.Tensor], where: str) -> MagvitConfig:
        """The sizes a MAGVIT-v2 state dict (`encoder.*`, `decoder.*`, as showlab/magvitv2 saves it)
        was built with, read from its tensors' shapes: showlab/magvitv2's config.json records none
        of them. A level without residual blocks has no width of its own; it keeps its input's, which
        builds the same tensors. Raises ValueError naming the tensor that is missing or odd."""
        def shape(name: str) -> tuple[int, ...]:
            if name not in state:
                raise ValueError(f"{where}: no {name}; not MAGVIT-v2 weights as showlab/magvitv2 saves them")
            return tuple(state[name].shape)

        def blocks(prefix: str) -> list[int]:  # residual blocks per level, levels counted by their resampling convs
            resample = "downsample" if prefix == "encoder.down" else "upsample"
            n = 1 + sum(1 for k in state if re.fullmatch(rf"{re.escape(prefix)}\.\d+\.{resample}\.conv\.weight", k))
            return [len({k.split(".")[4] for k in state if k.startswith(f"{prefix}.{i}.block.")}) for i in range(n)]

        def multiple(width: int, name: str) -> int:
            if width % ch:
                raise ValueError(f"{where}: {name} is {width} wide, not a multiple of the first level's {ch} channels")
            return width // ch

        ch, bits = shape("encoder.conv_in.weight")[0], shape("encoder.conv_out.weight")[0]
        enc_blocks, dec_blocks = blocks("encoder.down"), blocks("decoder.up")
        if len(enc_blocks) != len(dec_blocks):
            raise ValueError(f"{where}: the encoder has {len(enc_blocks)} levels and the decoder {len(dec_blocks)}")
        enc_mult, width = [], ch
        for i, n in enumerate(enc_blocks):
            name = f"encoder.down.{i}.block.0.conv1.weight"
            following = f"encoder.down.{i + 1}.block.0.conv1.weight"
            if n:
                width = shape(name)[0]
            elif following in state:  # the next level's blocks start from this level's nominal width
                width = shape(following)[1]
            enc_mult.append(multiple(width, name if n else following))
        dec_mult = [0] * len(dec_blocks)
        width = shape("decoder.conv_in.weight")[0]
        for i in reversed(range(len(dec_blocks))):
            name = f"decoder.up.{i}.block.0.conv1.weight"
            if dec_blocks[i]:
                width = shape(name)[0]
            dec_mult[i] = multiple(width, name)
        if not dec_blocks[-1]:  # the decoder starts from ch * mult[-1]
            dec_mult[-1] = multiple(shape("decoder.conv_in.weight")[0], "decoder.conv_in.weight")
        return cls(ch=ch, encoder_ch_mult=enc_mult, encoder_res_blocks=enc_blocks, decoder_ch_mult=dec_mult,
                   decoder_res_blocks=dec_blocks, bits=bits)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GroupNorm → swish → 3x3 conv, twice, plus the input (a 1x1 conv when the width changes)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = group_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map (1x1 conv projections)."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = group_norm(c)
        self.q, self.k, self.v = (nn.Conv2d(c, c, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (proj(n).flatten(2).transpose(1, 2) for proj in (self.q, self.k, self.v))  # (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)  # scale C^-1/2, as the reference's softmax(q k / sqrt(C))
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one pixel on the right and bottom only (taming's asymmetric pad)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the encoder or decoder: residual blocks, then a resampling (not on the last)."""

    def __init__(self, widths: list[tuple[int, int]], resample: nn.Module | None, name: str):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(a, b) for a, b in widths)
        self.resample_name = name if resample is not None else None
        if resample is not None:
            self.add_module(name, resample)  # "downsample" / "upsample": the checkpoint's names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x if self.resample_name is None else getattr(self, self.resample_name)(x)


def _widths(c_in: int, c_out: int, n: int) -> list[tuple[int, int]]:
    return [(c_in if i == 0 else c_out, c_out) for i in range(n)]


class Middle(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block_1 = ResnetBlock(c, c)
        self.attn_1 = AttnBlock(c)
        self.block_2 = ResnetBlock(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """(B, 3, H, W) pixels in [-1, 1] → (B, bits, H/d, W/d) continuous latents."""

    def __init__(self, cfg: MagvitConfig):
        super().__init__()
        ch, mult, blocks = cfg.ch, cfg.encoder_ch_mult, cfg.encoder_res_blocks
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        # Level i starts from ch * mult[i - 1] (ch for the first) whatever the previous level ended
        # with, as the reference builds it; a level without blocks keeps its input width.
        widths = [ch] + [ch * m for m in mult]
        levels = []
        for i in range(len(mult)):
            c = widths[i + 1] if blocks[i] else widths[i]
            levels.append(Level(_widths(widths[i], c, blocks[i]), Downsample(c) if i < len(mult) - 1 else None,
                                "downsample"))
        self.down = nn.ModuleList(levels)
        self.mid = Middle(c)
        self.norm_out = group_norm(c)
        self.conv_out = nn.Conv2d(c, cfg.bits, 3, padding=1)
        self.quant_conv = nn.Conv2d(cfg.bits, cfg.bits, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.conv_out(swish(self.norm_out(self.mid(h))))
        return self.quant_conv(h)


class Decoder(nn.Module):
    """(B, bits, h, w) quantised latents (±1) → (B, 3, h*d, w*d) pixels, roughly in [-1, 1]."""

    def __init__(self, cfg: MagvitConfig):
        super().__init__()
        ch, mult, blocks = cfg.ch, cfg.decoder_ch_mult, cfg.decoder_res_blocks
        self.post_quant_conv = nn.Conv2d(cfg.bits, cfg.bits, 1)
        c = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.bits, c, 3, padding=1)
        self.mid = Middle(c)
        levels: list[Level] = []
        for i in reversed(range(len(mult))):  # built from the lowest resolution up, stored by level
            out = ch * mult[i] if blocks[i] else c
            levels.insert(0, Level(_widths(c, out, blocks[i]), Upsample(out) if i != 0 else None, "upsample"))
            c = out
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(c)
        self.conv_out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))


class MagvitV2(nn.Module):
    """The tokenizer: `encode` pixels to codes (B, h*w, row-major), `decode` codes to pixels."""

    def __init__(self, cfg: MagvitConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # bit weights, most significant first; not saved (the reference saves it, the converter drops it)
        self.register_buffer("bit_values", 2 ** torch.arange(cfg.bits - 1, -1, -1), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] → (B, H/d * W/d) codes. A latent > 0 is bit 1, else 0 (LFQ).
        Runs in the tokenizer's own dtype even under autocast: lower precision flips near-zero signs."""
        with _without_autocast(pixels.device):
            z = self.encoder(pixels.to(self.dtype))
        bits = (z > 0).long()
        return (bits * self.bit_values[:, None, None]).sum(1).flatten(1)

    def latents(self, codes: torch.Tensor, side: int) -> torch.Tensor:
        """(B, side*side) codes → (B, bits, side, side) latents of ±1."""
        bits = (codes[..., None] // self.bit_values) % 2  # (B, L, bits)
        z = bits.to(self.dtype) * 2 - 1
        return z.view(len(codes), side, side, -1).permute(0, 3, 1, 2)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, L) codes of a square token grid → (B, 3, H, W) pixels, not clamped."""
        side = math.isqrt(codes.shape[1])
        if side * side != codes.shape[1]:
            raise ValueError(f"MAGVIT-v2 decodes a square grid of tokens; got {codes.shape[1]} per image")
        with _without_autocast(self.bit_values.device):
            return self.decoder(self.latents(codes.to(self.bit_values.device), side))


def _without_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()  # e.g. the meta device, which has no autocast


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) decoder output → (B, H, W, 3) uint8: [-1, 1] to [0, 255], clamped, truncated
    (as Show-o's inference scripts convert)."""
    x = ((pixels.float() + 1) / 2).clamp(0, 1) * 255
    return x.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()


def resize_center_crop(image: np.ndarray, side: int) -> np.ndarray:
    """Resize so the short side is `side` (PIL bicubic, the long side truncated), then crop the
    centre square: torchvision's Resize(side) and CenterCrop(side) on a PIL image, which
    Show-o's `image_transform` uses."""
    h, w = image.shape[:2]
    if w <= h:
        size = (side, int(side * h / w))
    else:
        size = (int(side * w / h), side)
    pil = Image.fromarray(image)
    if pil.size != size:
        pil = pil.resize(size, Image.BICUBIC)
    out = np.asarray(pil)
    top = round((out.shape[0] - side) / 2.0)  # Python's round, as torchvision
    left = round((out.shape[1] - side) / 2.0)
    return out[top : top + side, left : left + side]


def pixel_values(images: Sequence[np.ndarray], side: int) -> torch.Tensor:
    """(N, 3, side, side) float32 in [-1, 1] on the CPU from (H, W, 3) uint8 RGB arrays of any size."""
    if not images:
        return torch.zeros(0, 3, side, side)
    arrays = [resize_center_crop(np.ascontiguousarray(image), side) for image in images]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255)
    return x.sub(0.5).div(0.5)
