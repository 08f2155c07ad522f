"""The Backbone protocol: what HermesFlow needs from a unified model, and what every adapter shares.

Curation, training and evaluation receive a `Backbone` and use only the methods below; nothing
reaches into a model's internals. Conventions at this boundary:

- Images come in as (H, W, 3) uint8 RGB arrays of any size; the backbone turns them into its
  *understanding inputs* with `prepare_images` (token ids for masked-token models, pixel values for
  Janus's SigLIP encoder): a tensor with one row per image, which callers only index and repeat.
- Generated images are kept as *image token ids* (N, L), because re-encoding a decoded PNG can
  change the tokens; `decode` turns them into pixels, `prepare_generated` into understanding inputs.
- Log-probabilities come back as `LogProbs`: a sum and the number of tokens it sums over, so the
  loss can use sums (DPO) or per-token means (TRL's `sft`) without asking the backbone twice.
- Image log-probs take an explicit `ImageEstimator`: exact for autoregressive image tokens, a masked
  Monte-Carlo estimate for masked generators (the masks drawn from per-example seeds, so chosen and
  rejected, policy and reference, see the same masks).

`BackboneBase` holds what every adapter shares: device and dtype, the weights' fingerprint, LoRA
through `peft` and the reference taken with the adapter disabled.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import nn

from hermesflow.errors import UsageError
from hermesflow.sharding import gathered, is_sharded, meta_copy, shard, sharded_inference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class GenerationConfig:
    """How a backbone samples images and captions.

    `guidance` is w in MUSE/Show-o's form (1 + w)·cond − w·uncond (Janus's scale s is 1 + w);
    `steps` is the number of MaskGIT decoding steps (autoregressive backbones ignore it);
    temperature 0 is greedy; `top_k` 0 is off; `seed` makes sampling reproducible."""

    guidance: float = 2.0
    temperature: float = 1.0
    steps: int = 10
    top_k: int = 0
    seed: int = 0


@dataclass(frozen=True)
class LogProbs:
    """Summed log-probabilities (B,) and the number of tokens each sum covers (B,)."""

    total: torch.Tensor
    count: torch.Tensor

    def mean(self) -> torch.Tensor:
        return self.total / self.count

    def __getitem__(self, index) -> "LogProbs":
        return LogProbs(self.total[index], self.count[index])


@dataclass(frozen=True)
class ExactEstimator:
    """log π(x|y) exactly, by teacher forcing: for autoregressive image tokens (Janus, Emu3)."""

    name: ClassVar[str] = "exact"

    def key(self) -> str:
        return self.name


@dataclass(frozen=True)
class MaskedEstimator:
    """A Monte-Carlo estimate of log π(x|y) for masked (MaskGIT / Show-o) generators.

    Each of `samples` draws masks a share of the image tokens drawn from the cosine schedule and
    sums the log-probs of the true tokens at the masked positions; the draws are averaged.
    `weighting`: "none" (the sum as is), "ratio" (each draw divided by its mask ratio, an
    unbiased-ELBO-style weighting). The masks come from the per-example seeds the caller passes."""

    samples: int = 1
    weighting: str = "none"
    name: ClassVar[str] = "masked"

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise UsageError(f"mask samples must be at least 1, got {self.samples}")
        if self.weighting not in ("none", "ratio"):
            raise UsageError(f"mask weighting must be 'none' or 'ratio', got {self.weighting!r}")

    def key(self) -> str:
        return f"{self.name}-k{self.samples}-{self.weighting}"


ImageEstimator = ExactEstimator | MaskedEstimator


@runtime_checkable
class Backbone(Protocol):
    """A unified model as HermesFlow sees it (see the module docstring for the conventions)."""

    model_type: ClassVar[str]
    default_guidance: ClassVar[float]  # guidance w of its published inference: --guidance when not given
    image_size: int  # the side in pixels of the images it reads and draws

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def default_estimator(self) -> ImageEstimator:
        """The image log-prob estimator this kind of model calls for."""

    def fit_problems(self, image: np.ndarray | None, texts: Sequence[str]) -> list[str]:
        """Why this image and these texts (caption, questions, choices) cannot be represented by the
        model, one reason per problem; empty when they fit. Called on the data before any work."""

    def prompt_problems(self, prompts: Sequence[str]) -> list[str]:
        """`fit_problems` for texts used only as image-generation prompts (benchmark exports)."""

    def prompt_cut(self, prompt: str) -> int:
        """How many tokens of a generation prompt its text slot cuts off (0: it fits, or no slot);
        nonzero only when `long_text` is "truncate" (else such a prompt is a fit problem)."""

    def prepare_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Understanding inputs, one row per image (any size; converted and resized here)."""

    def prepare_generated(self, tokens: torch.Tensor) -> torch.Tensor:
        """Understanding inputs of generated images given as token ids."""

    def caption_logps(self, inputs: torch.Tensor, captions: Sequence[str]) -> LogProbs:
        """log π(caption | image) for each row of `inputs` and its caption, over the caption's tokens
        and its end token."""

    def answer_logps(self, inputs: torch.Tensor, questions: Sequence[str], answers: Sequence[str]) -> LogProbs:
        """log π(answer <eos> | image, question) for each row of `inputs`, its question and its answer,
        with gradients (the quantity `choice_logps` sums for each option)."""

    def choice_logps(self, inputs: torch.Tensor, questions: Sequence[str], choices: Sequence[Sequence[str]],
                     score: str = "sum") -> list[list[float]]:
        """Multiple choice scores: for each (image, question), log π(option <eos> | image, question) of
        each of its options, in order, summed over the option's tokens (`score="sum"`) or their mean
        per token (`"mean"`: under a BPE tokenizer the sum favours options of fewer tokens).
        Curation's graded self-score is the softmax over them."""

    def answer(self, inputs: torch.Tensor, questions: Sequence[str], choices: Sequence[Sequence[str]],
               score: str = "sum") -> list[str]:
        """One option per (image, question): the argmax of `choice_logps` (the first among equals)."""

    def sample_captions(self, inputs: torch.Tensor, n: int, gen: GenerationConfig) -> list[list[str]]:
        """`n` captions per image."""

    def generate(self, prompts: Sequence[str], n: int, gen: GenerationConfig) -> torch.Tensor:
        """Image token ids (len(prompts) * n, L), the n samples of a prompt adjacent."""

    def image_logps(self, prompts: Sequence[str], tokens: torch.Tensor, estimator: ImageEstimator,
                    seeds: Sequence[int]) -> LogProbs:
        """log π(image tokens | prompt), (B,); the prompt "" is the unconditional one (condition
        dropout). `seeds[b]` draws example b's masks for a masked estimator (ignored when exact)."""

    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        """Image token ids -> (N, image_size, image_size, 3) uint8 images."""

    def trainable_module(self) -> nn.Module:
        """The module whose parameters training updates (and PEFT wraps)."""

    def shard_units(self) -> list[nn.Module]:
        """The transformer blocks, each sharded on its own under --sharding fsdp (gathered for its forward);
        every forward pass must run each of them once, in this order (sharded sampling relies on it)."""

    def reference_context(self) -> contextlib.AbstractContextManager:
        """A context in which the model computes the reference's log-probs (LoRA adapter disabled)."""

    def fingerprint(self) -> str:
        """A short digest of the weights, so cached log-probs are never reused for another model."""

    def shard(self) -> Backbone:
        """These weights sharded over the processes for inference (--sharding fsdp); frozen from then on."""

    def whole(self) -> Backbone:
        """The whole weights on every process: itself, or gathered into a new model if sharded."""

    def inference(self) -> contextlib.AbstractContextManager:
        """The context every process enters for a phase of forward passes (curation, evaluation)."""

    def save_pretrained(self, directory: str | Path) -> None:
        """Weights (safetensors) and config.json with its `model_type`, no pickle."""


def repeated_cache(prefix, n: int, into):
    """`into` (a transformers Cache) filled with the keys and values of `prefix` (a DynamicCache),
    each row repeated `n` times, adjacent: n samples that continue one prompt share the prompt's
    forward pass (an image's captions: its whole image block)."""
    for i, layer in enumerate(prefix.layers):
        into.update(layer.keys.repeat_interleave(n, dim=0), layer.values.repeat_interleave(n, dim=0), i)
    return into


def sample_token(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator | None) -> torch.Tensor:
    """One token id per row of `logits` (B, V): the argmax at temperature 0, else a draw from
    softmax(logits / temperature) over the `top_k` largest logits (all when 0). The draw happens on
    the CPU with `generator`, so a seed samples the same tokens on any device."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator)[:, 0].to(logits.device)


def check_answers(inputs: torch.Tensor, questions: Sequence[str], answers: Sequence[str]) -> None:
    """The arguments of `Backbone.answer_logps`: one image, question and answer per row."""
    if not len(inputs) == len(questions) == len(answers):
        raise UsageError(f"answer_logps: {len(inputs)} images, {len(questions)} questions, {len(answers)} answers")


def check_choices(inputs: torch.Tensor, questions: Sequence[str], choices: Sequence[Sequence[str]]) -> None:
    """The arguments of `Backbone.choice_logps` and `answer`: one image, question and non-empty
    choice list per row."""
    if not (len(inputs) == len(questions) == len(choices)):
        raise UsageError(f"answer: {len(inputs)} images, {len(questions)} questions, {len(choices)} choice lists")
    if any(len(options) == 0 for options in choices):
        raise UsageError("answer: every question needs at least one choice")


CHOICE_SCORES = ("sum", "mean")


def choice_scores(logps: LogProbs, score: str) -> torch.Tensor:
    """Options' log-probs as `choice_logps` returns them: summed over each option's tokens, or their mean."""
    if score not in CHOICE_SCORES:
        raise UsageError(f"choice score must be one of {CHOICE_SCORES}, got {score!r}")
    return logps.total if score == "sum" else logps.mean()


def per_question(scores: torch.Tensor, choices: Sequence[Sequence[str]]) -> list[list[float]]:
    """Flat option scores (one per option, the options of each question in order) split per question."""
    flat, out, start = scores.float().cpu().tolist(), [], 0
    for options in choices:
        out.append(flat[start : start + len(options)])
        start += len(options)
    return out


def best_choices(scores: Sequence[Sequence[float]], choices: Sequence[Sequence[str]]) -> list[str]:
    """Multiple choice: `scores[i]` holds one log-likelihood per option of question i; its answer is
    the highest-scoring option (the first among equals)."""
    return [options[max(range(len(options)), key=lambda k: s[k])] for s, options in zip(scores, choices)]


def rgb_problems(image: np.ndarray) -> list[str]:
    """Why an array is not an (H, W, 3) uint8 RGB image with pixels; empty when it is one."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        return [f"image is {image.dtype} {tuple(image.shape)}; expected an (H, W, 3) uint8 RGB image"]
    if min(image.shape[:2]) < 1:
        return [f"image {tuple(image.shape)} has no pixels"]
    return []


def check_rgb(image: np.ndarray) -> np.ndarray:
    """The image as an array, or a UsageError saying why it is not an (H, W, 3) uint8 RGB image."""
    image = np.asarray(image)
    problems = rgb_problems(image)
    if problems:
        raise UsageError(problems[0])
    return image


def token_problem(text: str, ids: Sequence[int], specials: set[int], unk_id: int | None, model: str) -> str | None:
    """Why a text cannot be read as the tokenizer encoded it (`ids`): empty, holding the model's special
    tokens, or words the tokenizer does not know; None when it can."""
    if not text.strip():
        return f"text {text!r} is empty"
    if specials & set(ids):
        return f"text {short(text)} contains {model} special tokens"
    if unk_id is not None and unk_id in ids:
        return f"text {short(text)} has words the {model} tokenizer does not know"
    return None


def short(text: str, limit: int = 60) -> str:
    """A text quoted for an error message, cut at `limit` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


class BackboneBase(nn.Module):
    """What every adapter shares. Subclasses set `model_type`, implement the protocol's model
    methods, and name their LoRA target modules."""

    model_type: ClassVar[str] = ""
    lora_targets: ClassVar[tuple[str, ...]] = ()
    # the classifier-free guidance w, in (1 + w)·cond − w·uncond, of the model's published inference:
    # what --guidance means when it is not given
    default_guidance: ClassVar[float] = 2.0
    # a generation prompt longer than the model's text slot (Show-o's): "truncate" it as the reference
    # pipeline does, or "refuse" it as a fit problem
    long_text: str = "truncate"

    def prompt_problems(self, prompts: Sequence[str]) -> list[str]:
        return self.fit_problems(None, prompts)

    def prompt_cut(self, prompt: str) -> int:
        return 0

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def trainable_module(self) -> nn.Module:
        return self

    def shard_units(self) -> list[nn.Module]:
        raise UsageError(f"{self.model_type}: --sharding fsdp needs the model's transformer blocks, which this adapter does not name")

    def prepare_generated(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.prepare_images(list(self.decode(tokens)))

    def answer(self, inputs: torch.Tensor, questions: Sequence[str], choices: Sequence[Sequence[str]], **kwargs) -> list[str]:
        """The argmax of `choice_logps` (written once, so an answer and its score never disagree)."""
        return best_choices(self.choice_logps(inputs, questions, choices, **kwargs), choices)

    def fingerprint(self) -> str:
        """sha1 over every parameter and buffer's name, dtype and bytes (bf16 included); a sharded
        model's is the one its whole weights had (taken by `shard`, so the same at any world size)."""
        if "_whole" in self.__dict__:
            return self.__dict__["_whole"][0]
        h = hashlib.sha1()
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:12]

    # ----- sharded inference (--sharding fsdp) --------------------------------------------------------

    def shard(self) -> Backbone:
        """Shard these weights over the processes (FSDP2, each of `shard_units` on its own), in place:
        each process keeps 1/N of them, and curation and evaluation run in `inference()`. The model
        is frozen from then on; its fingerprint and an empty frame to gather it into are taken first."""
        self.__dict__["_whole"] = (self.fingerprint(), meta_copy(self))
        shard(self, self.shard_units())
        return self

    def whole(self) -> Backbone:
        """Itself, or if sharded its whole weights gathered into a new model on every process (a collective)."""
        if "_whole" not in self.__dict__:
            return self
        return gathered(self, meta_copy(self.__dict__["_whole"][1]))

    def inference(self) -> contextlib.AbstractContextManager:
        return sharded_inference(self, self.shard_units()) if is_sharded(self) else contextlib.nullcontext()

    # ----- LoRA -------------------------------------------------------------------------------------

    @property
    def peft_model(self):
        return self.__dict__.get("_peft")  # kept out of nn.Module's registry: it wraps our own modules

    def reference_context(self) -> contextlib.AbstractContextManager:
        if self.peft_model is None:
            raise UsageError("the reference context needs a LoRA adapter (--lora-r); without one use the cached "
                             "or online reference")
        return self.peft_model.disable_adapter()

    def add_lora(self, r: int, alpha: float, target_modules: Sequence[str] | None = None, dropout: float = 0.0, seed: int = 0) -> None:
        """Wrap the trainable module's target layers with LoRA adapters (only they will train), their
        random initial weights drawn from `seed`, so that a run is repeatable."""
        from peft import LoraConfig, get_peft_model

        targets = list(target_modules or self.lora_targets)
        if not targets:
            raise UsageError(f"{self.model_type}: no LoRA target modules known; pass --lora-target-modules")
        config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=dropout)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.__dict__["_peft"] = get_peft_model(self.trainable_module(), config)
        except ValueError as e:  # peft: "Target modules {...} not found in the base model"
            raise UsageError(f"{self.model_type}: LoRA target modules {targets} do not fit the model ({e})") from None

    def save_adapter(self, directory: str | Path) -> None:
        """The LoRA adapter in PEFT's format (adapter_config.json, adapter_model.safetensors)."""
        self.peft_model.save_pretrained(str(directory), safe_serialization=True)

    def load_adapter(self, directory: str | Path) -> None:
        """Load a saved PEFT adapter onto the trainable module."""
        from peft import PeftModel

        self.__dict__["_peft"] = PeftModel.from_pretrained(self.trainable_module(), str(directory))

    def merge_lora(self) -> None:
        """Fold the adapter into the weights; the model is a plain model again."""
        if self.peft_model is not None:
            self.peft_model.merge_and_unload()
            del self.__dict__["_peft"]

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        """Eval mode and no autograd, restoring the training mode afterwards. no_grad rather than
        inference_mode: sampled tokens may later enter a training step, which inference tensors cannot."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)
