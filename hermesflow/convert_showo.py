"""Convert the official Show-o checkpoints into a HermesFlow Show-o folder (`model_type` "show-o").

The official release is three folders, as the Hub publishes them: the model (`showlab/show-o` or
`showlab/show-o-512x512`: config.json and pytorch_model.safetensors with `showo.*` weights), the image
tokenizer (`showlab/magvitv2`: config.json, which records no sizes, and pytorch_model.safetensors with
`encoder.*`, `decoder.*` and the LFQ's constant tables) and Phi-1.5 (`microsoft/phi-1_5`, which Show-o's
config names as `llm_model_path`: its config and tokenizer). Older commits of these repositories hold
pytorch_model.bin instead; every layout in WEIGHT_FILES is read. The image tokenizer's sizes are read
from its weights' shapes. The result is one folder: model.safetensors (Phi under `showo.`, MAGVIT-v2
under `vq_model.`), config.json and the tokenizer with Show-o's [PAD] and nine tokens added, loadable
by `ShowoBackbone.from_pretrained`.

`.bin` files are read with `torch.load(weights_only=True)` (tensors only, no code); safetensors
files (single or sharded with an index) are read as they are."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from hermesflow.backbones.magvit2 import MagvitConfig
from hermesflow.backbones.showo import PAD_TOKEN, PHI_1_5, SPECIAL_TOKENS, ShowoBackbone, ShowoConfig
from hermesflow.errors import UsageError

# Every layout the official repositories have published weights in, in the order they are looked for:
# showlab/show-o, show-o-512x512 and magvitv2 hold `pytorch_model.safetensors` today (magvitv2's
# `pytorch_model.bin` was deleted in a later commit); transformers' and diffusers' own names follow.
WEIGHT_FILES = ("pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.safetensors",
                "pytorch_model.safetensors.index.json", "model.safetensors.index.json",
                "diffusion_pytorch_model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json", "diffusion_pytorch_model.bin",
                "diffusion_pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def weight_file(folder: Path) -> Path | None:
    """The first of WEIGHT_FILES in `folder` (None: none there)."""
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """A folder's state dict from safetensors or (tensors only) .bin, single file or sharded."""
    path = weight_file(folder)
    if path is None:
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise UsageError(f"{folder}: no weights (looked for {', '.join(WEIGHT_FILES)}; the folder holds "
                         f"{', '.join(found[:12]) or 'nothing'}{', ...' if len(found) > 12 else ''})")
    if path.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
            raise UsageError(f"{path}: not a weight index ({type(e).__name__}: {e})") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_read_file(folder / shard, f"shard of {path.name}"))
        return state
    return _read_file(path)


def _read_file(path: Path, what: str = "weight file") -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UsageError(f"{path}: {what} not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, SafetensorError, pickle.UnpicklingError) as e:  # damaged, or not plain tensors
        raise UsageError(f"{path}: cannot be read as weights ({e})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint {'model': state_dict, ...}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path}: not a state dict of tensors")
    return state


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise UsageError(f"{path}: not found")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: not a JSON object")
    return raw


def _find(given: str | Path | None, candidates: list[Path], what: str, holds) -> Path:
    """The folder named, else the first candidate that exists; `holds(folder)` says why one cannot be used."""
    if given is not None:
        folder = Path(given)
        if not folder.is_dir():
            raise UsageError(f"{what} folder {folder}: no such folder")
        candidates = [folder]
    for folder in candidates:
        if folder.is_dir():
            problem = holds(folder)
            if problem:
                raise UsageError(f"{what} folder {folder}: {problem}")
            return folder
    raise UsageError(f"no {what} folder found (looked for {' and '.join(str(c) for c in candidates)}); name it")


def _weights_problem(folder: Path) -> str | None:
    return None if weight_file(folder) else f"no weights (looked for {', '.join(WEIGHT_FILES)})"


def _tokenizer_problem(folder: Path) -> str | None:
    return None if any((folder / m).is_file() for m in TOKENIZER_FILES) else f"no tokenizer (looked for {', '.join(TOKENIZER_FILES)})"


def read_magvit_config(path: str | Path) -> MagvitConfig:
    """`--magvit-config FILE`: the image tokenizer's sizes as JSON (MagvitConfig's fields), for weights
    whose shapes do not tell them."""
    raw = _read_json(Path(path))
    known = set(MagvitConfig.__dataclass_fields__)
    if set(raw) - known:
        raise UsageError(f"{path}: unknown keys {sorted(set(raw) - known)}; expected some of {sorted(known)}")
    try:
        return MagvitConfig(**raw)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{path}: {e}") from None


def lfq_tables(bits: int) -> dict[str, torch.Tensor]:
    """The constant tables the reference LFQ saves: each code's ±1 bits, and the bit weights."""
    powers = 2 ** torch.arange(bits - 1, -1, -1)
    binary = (torch.arange(2 ** bits)[:, None] // powers) % 2
    return {"quantize.embedding": binary.float() * 2 - 1, "quantize.power_vals": powers}


def phi_fields(folder: Path) -> dict:
    """Phi's sizes from the tokenizer folder's config.json (microsoft/phi-1_5 has one), else Phi-1.5's."""
    path = folder / "config.json"
    if not path.is_file():
        return dict(PHI_1_5)
    raw = _read_json(path)
    if raw.get("model_type") != "phi":
        raise UsageError(f"{path}: not a Phi config (model_type {raw.get('model_type')!r})")
    if raw.get("rope_parameters"):  # transformers 5 writes rope settings here
        raw = {**raw, **raw["rope_parameters"]}
    missing = [k for k in PHI_1_5 if k not in raw]
    if missing:
        raise UsageError(f"{path}: Phi config lacks {missing}")
    return {k: raw[k] for k in PHI_1_5}


def convert_showo(src: str | Path, dst: str | Path, magvit: str | Path | None = None,
                  tokenizer: str | Path | None = None, max_seq_length: int = 128,
                  magvit_config: MagvitConfig | None = None) -> Path:
    """Write a HermesFlow Show-o folder at `dst` from the official folders.

    `src`: the show-o or show-o-512x512 folder. `magvit`: the magvitv2 folder (default: `src/magvitv2`
    or a `magvitv2` folder beside `src`). `tokenizer`: Phi-1.5's folder (default: `src` if it holds a
    tokenizer, else a `phi-1_5` folder beside it). `max_seq_length`: the text-to-image text slot the
    checkpoint was trained with (Show-o's configs: 128). `magvit_config`: the image tokenizer's sizes
    (default: read from its weights' shapes, `MagvitConfig.from_weights`, since showlab/magvitv2's
    config.json records none)."""
    from transformers import AutoTokenizer

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UsageError(f"Show-o folder {src}: no such folder")
    official = _read_json(src / "config.json")
    if official.get("w_clip_vit"):
        raise UsageError(f"{src}: a Show-o variant with a CLIP-ViT understanding encoder (w_clip_vit); only the "
                         "MAGVIT-v2 one is supported")
    for key in ("vocab_size", "llm_vocab_size", "num_vq_tokens"):
        if not isinstance(official.get(key), int):
            raise UsageError(f"{src / 'config.json'}: no integer {key}; is this an official Show-o folder?")
    magvit_dir = _find(magvit, [src / "magvitv2", src.parent / "magvitv2"], "magvitv2", _weights_problem)
    tok_dir = _find(tokenizer, [src] if _tokenizer_problem(src) is None else [src.parent / "phi-1_5"], "Phi-1.5 tokenizer",
                    _tokenizer_problem)
    if weight_file(src) is None:
        raise UsageError(f"Show-o folder {src}: no weights (looked for {', '.join(WEIGHT_FILES)})")
    vq_state = read_weights(magvit_dir)
    if magvit_config is None:
        try:
            magvit_config = MagvitConfig.from_weights(vq_state, f"{weight_file(magvit_dir)}")
        except ValueError as e:
            raise UsageError(f"{e}; name its sizes with --magvit-config FILE") from None
    side = math.isqrt(official["num_vq_tokens"])
    cfg = ShowoConfig(phi=phi_fields(tok_dir) if tok_dir != src else dict(PHI_1_5), magvit=magvit_config.to_dict(), llm_vocab_size=official["llm_vocab_size"],
                      num_vq_tokens=official["num_vq_tokens"], image_size=side * magvit_config.downsample,
                      max_seq_length=max_seq_length)
    if cfg.vocab_size != official["vocab_size"] or official.get("codebook_size", cfg.codebook_size) != cfg.codebook_size:
        raise UsageError(f"{src / 'config.json'}: vocab_size {official['vocab_size']} and codebook_size "
                         f"{official.get('codebook_size')} do not fit {official['llm_vocab_size']} text tokens + 10 new "
                         f"tokens + {cfg.codebook_size} codes (the {magvit_config.bits}-bit image tokenizer in {magvit_dir}) "
                         f"+ the mask token = {cfg.vocab_size}")

    try:
        text_tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True, use_fast=True)
    except (OSError, ValueError) as e:
        raise UsageError(f"tokenizer folder {tok_dir}: cannot load it ({e})") from None
    text_tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})  # as Show-o's UniversalPrompting does
    text_tokenizer.add_tokens(list(SPECIAL_TOKENS))
    cfg.bos_id = cfg.eos_id = text_tokenizer.eos_token_id  # Phi's <|endoftext|> plays both roles

    state = dict(read_weights(src))
    for name, table in lfq_tables(magvit_config.bits).items():
        if name in vq_state:
            stored = vq_state.pop(name)
            if stored.shape != table.shape or not torch.equal(stored.to(table.dtype), table):
                raise UsageError(f"{magvit_dir}: {name} is not the {magvit_config.bits}-bit lookup-free quantiser's "
                                 f"table (shape {tuple(stored.shape)})")
    state.update({f"vq_model.{k}": v for k, v in vq_state.items()})
    with torch.device("meta"):
        model = ShowoBackbone(cfg)
    model._check_tokenizer(text_tokenizer)
    model.load_weights(state, f"{src} with {magvit_dir}")
    model.tokenizer = text_tokenizer
    model.save_pretrained(dst)
    return dst
