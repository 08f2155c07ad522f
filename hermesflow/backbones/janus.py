"""Janus and Janus-Pro (DeepSeek, arXiv 2410.13848 / 2501.17811) behind HermesFlow's backbone protocol.

The model is transformers' `JanusForConditionalGeneration`: one Llama language model that reads
images through a SigLIP encoder and an aligner (understanding), and writes them as VQ token ids
predicted one by one through a separate embedding and head (generation). Both directions are
autoregressive, so image log-probs are exact (`ExactEstimator`).

Sequences follow Janus's "deepseek" SFT format as the official code builds them
(janus/models/processing_vlm.py, conversation.py, generation_inference.py) and transformers'
converted processor does (its chat template, `use_default_system_prompt`):

    understanding  <bos>{system}<|User|>: <begin_of_image><image_placeholder>×N<end_of_image>\\n{question}\\n\\n
                   <|Assistant|>: {answer}<eos>
    generation     <bos><|User|>: {prompt}\\n\\n<|Assistant|>:<begin_of_image>{image tokens}
    unconditional  the generation prompt with every token between <bos> and <begin_of_image> made <pad>

{system} is Janus's default system prompt followed by a blank line (`SYSTEM_PROMPT`) when the
folder's processor says `use_default_system_prompt` (transformers' converted Janus and Janus-Pro
folders do, as the official processor always adds it to understanding prompts), or when the folder
has no processor config; empty when it says false. Generation prompts never carry it (the official
generation code passes an empty one). Where the folder has a chat template, the user turn is rendered
by it; otherwise by the format above, which is what the converter's template renders.

The N placeholders are replaced by the aligned SigLIP features of the image. A caption is the answer
to `CAPTION_QUESTION`; a multiple-choice answer is the answer to its question. The unconditional
prompt is Janus's classifier-free-guidance branch; the prompt "" stands for it (condition dropout).

Generation runs its own KV-cached loop rather than `generate(generation_mode="image")`, which can
neither turn guidance off nor take a seed. Sampling draws on the CPU from a seeded generator, so a
seed gives the same draws on any device.

Images are prepared by Janus's PIL image processor (resize the longest side to the model's side, pad
to a square with the mean colour, normalise with SigLIP's mean and std 0.5), read from the folder's
processor config when there is one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import transformers
from transformers import (
    AutoTokenizer,
    Cache,
    DynamicCache,
    JanusConfig,
    JanusForConditionalGeneration,
    JanusProcessor,
    PreTrainedTokenizerBase,
    StaticCache,
)
from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil
from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

from hermesflow.backbones.base import (
    BackboneBase,
    ExactEstimator,
    GenerationConfig,
    ImageEstimator,
    LogProbs,
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
from hermesflow.errors import UsageError
from hermesflow.progress import track

CAPTION_QUESTION = "Describe this image in one sentence."
SYSTEM_PROMPT = DEFAULT_SYSTEM_PROMPT  # "You are a helpful language and vision assistant. ...\n\n"
UNDERSTANDING_TEMPLATE = "<|User|>: {image}\n{question}\n\n<|Assistant|>:"
GENERATION_TEMPLATE = "<|User|>: {prompt}\n\n<|Assistant|>:"
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)  # Janus's image processor config; used when a folder has none
LM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def language_model_projections(root: torch.nn.Module) -> tuple[str, ...]:
    """The full paths of the language model's attention projections under `root`, a module holding
    the Janus model at `.model` as the backbone does (JanusBackbone.lora_targets)."""
    return tuple(name for name, _ in root.named_modules()
                 if name.startswith(LANGUAGE_MODEL + ".") and name.rsplit(".", 1)[-1] in LM_PROJECTIONS)
LANGUAGE_MODEL = "model.model.language_model"  # its path inside the backbone, the module PEFT wraps


@dataclass(frozen=True)
class SpecialTokens:
    """The ids of the tokens Janus's sequences are built from."""

    bos: int
    eos: int
    pad: int
    image: int  # the image placeholder of understanding prompts
    boi: int  # begin of image
    eoi: int  # end of image

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase, config: JanusConfig) -> SpecialTokens:
        """Read from the tokenizer (Janus folders name them `image_token`, `boi_token`, `eoi_token`),
        falling back to Janus's own token strings and the text config's ids."""
        text = config.text_config

        def token_id(attribute: str, default: str | None, fallback: int | None) -> int:
            token = getattr(tokenizer, attribute, None) or default
            i = tokenizer.convert_tokens_to_ids(token) if token is not None else None
            if i is None or (i == tokenizer.unk_token_id and token != tokenizer.unk_token):
                i = fallback
            if i is None:
                raise UsageError(f"Janus tokenizer: no {attribute} ({default or 'not set'}) and no id for it in "
                                 f"config.json")
            return int(i)

        ids = cls(
            bos=token_id("bos_token", None, text.bos_token_id),
            eos=token_id("eos_token", None, text.eos_token_id),
            pad=token_id("pad_token", "<｜▁pad▁｜>", text.pad_token_id),
            image=token_id("image_token", "<image_placeholder>", config.image_token_id),
            boi=token_id("boi_token", "<begin_of_image>", None),
            eoi=token_id("eoi_token", "<end_of_image>", None),
        )
        if ids.image != config.image_token_id:
            raise UsageError(f"Janus folder: the tokenizer's image token has id {ids.image}, config.json's "
                             f"image_token_id is {config.image_token_id}")
        return ids


class JanusBackbone(BackboneBase):
    """Janus / Janus-Pro through `JanusForConditionalGeneration` (see the module docstring)."""

    model_type: ClassVar[str] = "janus"
    default_guidance: ClassVar[float] = 4.0  # Janus's cfg_weight 5 is 1 + w (generation_inference.py)
    caption_max_tokens: ClassVar[int] = 64  # sampled captions stop here if no <eos> came first

    def __init__(self, model: JanusForConditionalGeneration, tokenizer: PreTrainedTokenizerBase,
                 image_processor: JanusImageProcessorPil, prompts: PromptFormat | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.prompts = prompts or PromptFormat()
        config = model.config
        self.tokens = SpecialTokens.of(tokenizer, config)
        self.image_size: int = config.vision_config.image_size
        self.n_understanding_tokens = (self.image_size // config.vision_config.patch_size) ** 2
        rows, cols = model.model.vqmodel.quantize.quant_state_dims
        self.n_image_tokens = rows * cols
        self.codebook_size = config.vq_config.num_embeddings
        self.context = config.text_config.max_position_embeddings
        drawn = rows * 2 ** (len(config.vq_config.channel_multiplier) - 1)  # the VQ decoder upsamples per level
        if drawn != self.image_size or image_processor.size.height != self.image_size:
            raise UsageError(f"Janus folder: the vision encoder reads {self.image_size}px images, the VQ decoder "
                             f"draws {drawn}px and the image processor resizes to {image_processor.size.height}px; "
                             f"they must agree")
        self._image_start = self._understanding_ids("").index(self.tokens.image)

    # ----- loading and saving ---------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype = torch.float32) -> JanusBackbone:
        """A Janus folder in transformers' format (config.json, safetensors, tokenizer; processor
        config optional), never from the hub."""
        directory = Path(directory)
        try:
            model = JanusForConditionalGeneration.from_pretrained(directory, dtype=dtype, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError) as e:
            raise UsageError(f"model folder {directory}: cannot load it as Janus ({e})") from None
        _check_round_trip(tokenizer, directory)
        # a config without tie_word_embeddings reads as tied; say what the weights are, so that no later
        # tie_weights() copies the input embedding over a trained lm_head
        tied = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
        model.config.tie_word_embeddings = model.config.text_config.tie_word_embeddings = tied
        return cls(model, tokenizer, _image_processor(directory, model.config), PromptFormat.of(directory)).eval()

    def save_pretrained(self, directory: str | Path) -> None:
        """Weights, config, tokenizer and processor config: a plain Janus folder (loads with
        `JanusForConditionalGeneration` and `AutoProcessor`)."""
        if self.peft_model is not None:
            raise UsageError("the model has a LoRA adapter: merge it first (merge_lora) or save it alone "
                             "(save_adapter)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        JanusProcessor(image_processor=self.image_processor, tokenizer=self.tokenizer, num_image_tokens=self.n_understanding_tokens,
                       chat_template=self.prompts.chat_template,
                       use_default_system_prompt=self.prompts.system_prompt).save_pretrained(directory)

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """The language model's attention projections, by full path: PEFT matches a name against
        the end of each module's path, and the SigLIP encoder's projections are also called
        q_proj/k_proj/v_proj, so plain names would put adapters on the vision tower too."""
        return language_model_projections(self)

    def shard_units(self) -> list[torch.nn.Module]:
        """The language model's decoder layers (the vision tower and the image heads stay in the root)."""
        return list(self.get_submodule(LANGUAGE_MODEL).layers)

    def default_estimator(self) -> ImageEstimator:
        return ExactEstimator()

    # ----- what the model can represent -----------------------------------------------------------

    def prompt_problems(self, prompts: Sequence[str]) -> list[str]:
        return self.fit_problems(None, prompts, understanding=False)

    def fit_problems(self, image: np.ndarray | None, texts: Sequence[str], understanding: bool = True) -> list[str]:
        problems = []
        if image is not None:
            problems += rgb_problems(np.asarray(image))
        specials = set(vars(self.tokens).values())
        caption_prompt = len(self._understanding_ids(CAPTION_QUESTION))
        for text in texts:
            ids = self._encode(text)
            problem = token_problem(text, ids, specials, self.tokenizer.unk_token_id, "Janus")
            if problem:
                problems.append(problem)
            else:
                # The positions the text needs in its longest use: a caption or answer after the
                # caption prompt, a question before a one-token answer, an image prompt before the image.
                need = len(self._generation_ids(text)) + self.n_image_tokens - 1
                if understanding:
                    need = max(need, caption_prompt + len(self._answer_ids(text)), len(self._understanding_ids(text)) + 1)
                if need > self.context:
                    problems.append(f"text {short(text)} is {len(ids)} tokens and needs {need} positions; the Janus "
                                    f"model's context is {self.context}")
        return problems

    # ----- understanding --------------------------------------------------------------------------

    def prepare_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(N, 3, S, S) pixel values in the model's dtype, from RGB arrays of any size."""
        arrays = [check_rgb(np.asarray(image)) for image in images]
        if not arrays:
            return torch.zeros(0, 3, self.image_size, self.image_size, device=self.device, dtype=self.dtype)
        pixels = self.image_processor(images=arrays, return_tensors="pt", input_data_format="channels_last")
        return pixels["pixel_values"].to(self.device, self.dtype)

    def caption_logps(self, inputs: torch.Tensor, captions: Sequence[str]) -> LogProbs:
        if len(inputs) != len(captions):
            raise UsageError(f"caption_logps: {len(inputs)} images but {len(captions)} captions")
        if not captions:
            return self._no_logps()
        features = self._image_features(inputs)
        return self._answer_logps(features, [CAPTION_QUESTION] * len(captions), captions)

    def answer_logps(self, inputs: torch.Tensor, questions: Sequence[str], answers: Sequence[str]) -> LogProbs:
        check_answers(inputs, questions, answers)
        if not answers:
            return self._no_logps()
        return self._answer_logps(self._image_features(inputs), questions, answers)

    def choice_logps(self, inputs: torch.Tensor, questions: Sequence[str], choices: Sequence[Sequence[str]],
                     score: str = "sum", batch_size: int = 64) -> list[list[float]]:
        """log π(choice <eos> | image, question) of each choice, summed over its tokens (or their mean)."""
        check_choices(inputs, questions, choices)
        if not questions:
            return []
        scores = []
        with self.sampling():
            features = self._image_features(inputs)
            for s in track(range(0, len(questions), batch_size), "batch"):
                chunk = range(s, min(s + batch_size, len(questions)))
                scores.append(choice_scores(self._choice_logps(features[s : chunk.stop], [questions[i] for i in chunk],
                                                               [choices[i] for i in chunk]), score))
        return per_question(torch.cat(scores), choices)

    def _choice_logps(self, features: torch.Tensor, questions: Sequence[str],
                      choices: Sequence[Sequence[str]]) -> LogProbs:
        """log π(choice <eos> | image, question) for every choice of every question, in order. Each
        (image, question) prompt (about 600 positions on Janus-Pro, the image's 576 among them) runs
        once; its choices attend its cached keys and values."""
        # right padding: the image block must sit at the same place in every row (_embed_understanding);
        # positions count real tokens only, so the choices continue each prompt exactly
        prompts = [self._understanding_ids(q) for q in questions]
        width = max(map(len, prompts))
        ids = torch.tensor([q + [self.tokens.pad] * (width - len(q)) for q in prompts], device=self.device)
        mask = torch.tensor([[1] * len(q) + [0] * (width - len(q)) for q in prompts], device=self.device)
        cache = DynamicCache(config=self.model.config.text_config)
        hidden = self._language_model(self._embed_understanding(ids, features), mask, cache)
        last = hidden[torch.arange(len(prompts), device=self.device), torch.tensor([len(q) - 1 for q in prompts], device=self.device)]
        owners = torch.tensor([i for i, options in enumerate(choices) for _ in options], device=self.device)
        targets = [self._answer_ids(option) for options in choices for option in options]
        cache.batch_select_indices(owners)
        longest = max(map(len, targets))
        target = torch.tensor([t + [self.tokens.pad] * (longest - len(t)) for t in targets], device=self.device)
        valid = torch.tensor([[j < len(t) for j in range(longest)] for t in targets], device=self.device)
        hidden = self._language_model(self._embed_text(target), torch.cat([mask[owners], valid.long()], dim=1), cache)
        # the prompt's last position predicts a choice's first token, choice token j its token j + 1
        hidden = torch.cat([last[owners, None], hidden[:, :-1]], dim=1)
        logps = self.model.lm_head(hidden).float().log_softmax(-1).gather(-1, target[..., None])[..., 0]
        logps = torch.where(valid, logps, 0.0)
        return LogProbs(logps.sum(-1), valid.sum(-1).float())

    def sample_captions(self, inputs: torch.Tensor, n: int, gen: GenerationConfig) -> list[list[str]]:
        """`n` captions per image, sampled with a KV cache until <eos> or `caption_max_tokens`."""
        if n < 1:
            raise UsageError(f"sample_captions: n must be at least 1, got {n}")
        if not len(inputs):
            return []
        prompt = self._understanding_ids(CAPTION_QUESTION)
        budget = min(self.caption_max_tokens, self.context - len(prompt))
        if budget < 1:
            raise UsageError(f"the caption prompt takes {len(prompt)} positions: no room for a caption in the Janus "
                             f"model's context of {self.context}")
        generator = torch.Generator().manual_seed(gen.seed)
        eos = self.tokens.eos
        with self.sampling():
            features = self._image_features(inputs)
            ids, mask = self._left_pad([prompt] * len(features))  # one prompt for all rows: no padding
            # an image's n captions share its prompt: run it once, then repeat its keys and values n times
            prefix = DynamicCache(config=self.model.config.text_config)
            hidden = self._language_model(self._embed_understanding(ids, features), mask, prefix)
            cache = repeated_cache(prefix, n, self._cache(ids.shape[1] + budget))
            hidden, mask = hidden[:, -1:].repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
            out, done = [], torch.zeros(len(mask), dtype=torch.bool, device=self.device)
            for step in track(range(budget), "token"):
                token = sample_token(self.model.lm_head(hidden[:, -1]), gen.temperature, gen.top_k, generator)
                token = torch.where(done, eos, token)
                out.append(token)
                done = done | (token == eos)
                if step == budget - 1 or bool(done.all()):
                    break
                mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
                hidden = self._language_model(self._embed_text(token[:, None]), mask, cache)
        captions = [self._decode_text(row) for row in torch.stack(out, dim=1).tolist()]
        return [captions[i * n : (i + 1) * n] for i in range(len(inputs))]

    # ----- generation -----------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], n: int, gen: GenerationConfig) -> torch.Tensor:
        """(len(prompts) * n, L) image token ids, the n samples of a prompt adjacent, drawn token by
        token with a KV cache and guidance (1 + w)·cond − w·uncond on the logits (w = 0: no
        unconditional branch at all)."""
        if n < 1:
            raise UsageError(f"generate: n must be at least 1, got {n}")
        if not prompts:
            return torch.zeros(0, self.n_image_tokens, dtype=torch.long, device=self.device)
        rows = [ids for ids in map(self._generation_ids, prompts) for _ in range(n)]
        w = gen.guidance
        if w:  # the unconditional branch rides in the same batch, after the conditional rows
            rows += [self._unconditional(ids) for ids in rows]
        generator = torch.Generator().manual_seed(gen.seed)
        head = self.model.model.generation_head
        tokens = []
        with self.sampling():
            ids, mask = self._left_pad(rows)
            cache = self._cache(ids.shape[1] + self.n_image_tokens)
            hidden = self._language_model(self._embed_text(ids), mask, cache)
            for step in track(range(self.n_image_tokens), "token"):
                logits = head(hidden[:, -1]).float()
                if w:
                    cond, uncond = logits.chunk(2)
                    logits = (1 + w) * cond - w * uncond
                token = sample_token(logits, gen.temperature, gen.top_k, generator)
                tokens.append(token)
                if step == self.n_image_tokens - 1:
                    break
                fed = token.repeat(2) if w else token
                mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
                hidden = self._language_model(self._embed_image(fed[:, None]), mask, cache)
        return torch.stack(tokens, dim=1)  # outside inference mode: training reads these tokens later

    def image_logps(self, prompts: Sequence[str], tokens: torch.Tensor, estimator: ImageEstimator,
                    seeds: Sequence[int]) -> LogProbs:
        """Exact log π(tokens | prompt) by teacher forcing; `seeds` are not needed."""
        if not isinstance(estimator, ExactEstimator):
            raise UsageError(f"Janus generates image tokens autoregressively, so its image log-probs are exact: use "
                             f"the exact estimator, not {estimator.key()!r}")
        tokens = self._check_tokens(tokens)
        if len(prompts) != len(tokens):
            raise UsageError(f"image_logps: {len(prompts)} prompts but {len(tokens)} token rows")
        if not prompts:
            return self._no_logps()
        ids, mask = self._left_pad([self._generation_ids(p) for p in prompts])
        width = ids.shape[1]
        embeds = torch.cat([self._embed_text(ids), self._embed_image(tokens[:, :-1])], dim=1)
        mask = torch.cat([mask, mask.new_ones(len(mask), tokens.shape[1] - 1)], dim=1)
        # Left padding puts every prompt's last token (<begin_of_image>) at width - 1: from there on,
        # position width - 1 + j predicts image token j.
        hidden = self._language_model(embeds, mask)[:, width - 1 :]
        logps = self.model.model.generation_head(hidden).float().log_softmax(-1)
        logps = logps.gather(-1, tokens[..., None])[..., 0]
        return LogProbs(logps.sum(-1), torch.full((len(tokens),), float(tokens.shape[1]), device=self.device))

    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        """(N, S, S, 3) uint8 through the VQ decoder, un-normalised as Janus's processor does."""
        tokens = self._check_tokens(tokens)
        with self.sampling():
            pixels = self.model.decode_image_tokens(tokens).float()  # (N, S, S, 3), roughly in [-1, 1]
        mean = torch.tensor(self.image_processor.image_mean, device=pixels.device)
        std = torch.tensor(self.image_processor.image_std, device=pixels.device)
        # The decoder's pixels are not clamped; Janus clips to [0, 255] and truncates to uint8.
        return ((pixels * std + mean) * 255).clamp(0, 255).to(torch.uint8).cpu().numpy()

    # ----- sequences ------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _understanding_ids(self, question: str) -> list[int]:
        """<bos> and the prompt, its one image placeholder expanded to <boi> <image>×N <eoi>."""
        placeholder = self.tokenizer.convert_ids_to_tokens(self.tokens.image)
        ids = [self.tokens.bos] + self._encode(self.prompts.understanding(self.tokenizer, placeholder, question))
        at = ids.index(self.tokens.image)
        block = [self.tokens.boi] + [self.tokens.image] * self.n_understanding_tokens + [self.tokens.eoi]
        return ids[:at] + block + ids[at + 1 :]

    def _answer_ids(self, answer: str) -> list[int]:
        # "<|Assistant|>: {answer}": the space after the colon belongs to the answer (Janus's SFT format).
        return self._encode(" " + answer) + [self.tokens.eos]

    def _generation_ids(self, prompt: str) -> list[int]:
        """The image-generation prompt; "" is the unconditional one."""
        ids = [self.tokens.bos] + self._encode(self.prompts.generation(self.tokenizer, prompt)) + [self.tokens.boi]
        return self._unconditional(ids) if prompt == "" else ids

    def _unconditional(self, ids: list[int]) -> list[int]:
        """Janus's CFG branch: all but <bos> and <begin_of_image> made <pad>, the length kept."""
        return ids[:1] + [self.tokens.pad] * (len(ids) - 2) + ids[-1:]

    def _decode_text(self, ids: list[int]) -> str:
        if self.tokens.eos in ids:
            ids = ids[: ids.index(self.tokens.eos)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids padded on the left and their attention mask, so every row ends at T - 1."""
        width = max(map(len, rows))
        ids = [[self.tokens.pad] * (width - len(r)) + r for r in rows]
        mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
        return torch.tensor(ids, device=self.device), torch.tensor(mask, device=self.device)

    def _no_logps(self) -> LogProbs:
        return LogProbs(torch.zeros(0, device=self.device), torch.zeros(0, device=self.device))

    def _check_tokens(self, tokens: torch.Tensor | np.ndarray) -> torch.Tensor:
        tokens = torch.as_tensor(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != self.n_image_tokens:
            raise UsageError(f"image tokens must be (N, {self.n_image_tokens}) for this Janus model, "
                             f"got {tuple(tokens.shape)}")
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise UsageError(f"image tokens must be integer ids, got {tokens.dtype}")
        if len(tokens) and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size):
            raise UsageError(f"image token ids must lie in [0, {self.codebook_size}), "
                             f"got {int(tokens.min())}..{int(tokens.max())}")
        return tokens.to(self.device, torch.long)

    # ----- forward pieces -------------------------------------------------------------------------

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, N, H) aligned SigLIP features, the language model's inputs at the image placeholders."""
        return self.model.model.get_image_features(pixel_values.to(self.device, self.dtype)).pooler_output

    def _embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def _embed_image(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.prepare_embeddings_for_image_generation(tokens)

    def _embed_understanding(self, ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the image placeholders replaced by `features`. The image block sits
        at the same place in every understanding prompt, so a slice does what Janus's masked scatter
        does, without a data-dependent count."""
        embeds = self._embed_text(ids)
        start, end = self._image_start, self._image_start + self.n_understanding_tokens
        return torch.cat([embeds[:, :start], features.to(embeds.dtype), embeds[:, end:]], dim=1)

    def _cache(self, length: int) -> StaticCache:
        """A KV cache of `length` positions allocated once, as transformers' `generate` allocates it:
        a growing one copies itself at every token (benchmarks/bench_samplers.py times both loops)."""
        return StaticCache(config=self.model.config.text_config, max_cache_len=length)

    def _language_model(self, embeds: torch.Tensor, mask: torch.Tensor,
                        cache: Cache | None = None) -> torch.Tensor:
        """Last hidden states (B, t, H) of the newest `t` inputs, given the (B, T) attention mask of
        all inputs so far. Positions count real tokens only, so left padding changes nothing."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -embeds.shape[1] :]
        out = self.model.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                              cache=cache, use_cache=cache is not None)
        return out.last_hidden_state

    def _answer_logps(self, features: torch.Tensor, questions: Sequence[str], answers: Sequence[str]) -> LogProbs:
        """log π(answer <eos> | image, question) per row, teacher-forced in one right-padded batch.
        Causal attention keeps a row's tokens from seeing the padding after it; the mask is passed
        anyway, because without one transformers looks for packed sequences with a host sync."""
        prompts = [self._understanding_ids(q) for q in questions]
        targets = [self._answer_ids(a) for a in answers]
        rows = [p + t for p, t in zip(prompts, targets)]
        width, longest = max(map(len, rows)), max(map(len, targets))
        pad = self.tokens.pad
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
        hidden = self._language_model(self._embed_understanding(ids, features), mask)
        # Target j of a row is predicted at position len(prompt) - 1 + j; padding slots reuse the last one.
        where = [[len(p) - 1 + min(j, len(t) - 1) for j in range(longest)] for p, t in zip(prompts, targets)]
        where = torch.tensor(where, device=self.device)
        target = torch.tensor([t + [pad] * (longest - len(t)) for t in targets], device=self.device)
        valid = torch.tensor([[j < len(t) for j in range(longest)] for t in targets], device=self.device)
        hidden = hidden.gather(1, where[..., None].expand(-1, -1, hidden.shape[-1]))
        logps = self.model.lm_head(hidden).float().log_softmax(-1).gather(-1, target[..., None])[..., 0]
        logps = torch.where(valid, logps, 0.0)
        return LogProbs(logps.sum(-1), valid.sum(-1).float())


@dataclass(frozen=True)
class PromptFormat:
    """How a folder's processor builds prompts: whether understanding prompts begin with Janus's
    default system prompt, and the chat template that renders a user turn (None: `UNDERSTANDING_TEMPLATE`
    and `GENERATION_TEMPLATE`, what the converter's template renders)."""

    system_prompt: bool = True
    chat_template: str | None = None

    @classmethod
    def of(cls, directory: Path) -> PromptFormat:
        """The folder's processor settings (processor_config.json, chat_template.jinja or .json); a folder
        without a processor config gets the official format, system prompt included."""
        config = _json(directory / "processor_config.json")
        template = (directory / "chat_template.jinja").read_text("utf-8") if (directory / "chat_template.jinja").is_file() \
            else _json(directory / "chat_template.json").get("chat_template") or config.get("chat_template")
        if template is not None and not isinstance(template, str):
            raise UsageError(f"model folder {directory}: only a single chat template is supported, got {type(template).__name__}")
        return cls(bool(config.get("use_default_system_prompt", not config)), template)

    def understanding(self, tokenizer: PreTrainedTokenizerBase, placeholder: str, question: str) -> str:
        system = SYSTEM_PROMPT if self.system_prompt else ""
        if self.chat_template is None:
            return system + UNDERSTANDING_TEMPLATE.format(image=placeholder, question=question)
        return system + self._render(tokenizer, [{"type": "image"}, {"type": "text", "text": question}])

    def generation(self, tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
        if self.chat_template is None:
            return GENERATION_TEMPLATE.format(prompt=prompt)
        return self._render(tokenizer, [{"type": "text", "text": prompt}])

    def _render(self, tokenizer: PreTrainedTokenizerBase, content: list[dict]) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], chat_template=self.chat_template,
                                             tokenize=False, add_generation_prompt=True)


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: not a JSON object")
    return raw


def _check_round_trip(tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Refuse a tokenizer that loses the spaces between words: transformers before 5.25 loads Janus's
    byte-level tokenizer.json, labelled LlamaTokenizer, with a Metaspace pre-tokenizer that drops them."""
    text = "a b\n\nc"
    decoded = tokenizer.decode(tokenizer.encode(text, add_special_tokens=False))
    if len(decoded.split()) != len(text.split()):  # three words apart (a word-level test tokenizer may not know them)
        raise UsageError(f"model folder {directory}: its tokenizer decodes {text!r} as {decoded!r} (words lost or run "
                         f"together); transformers {transformers.__version__} misreads it: install transformers>=5.25")


def _image_processor(directory: Path, config: JanusConfig) -> JanusImageProcessorPil:
    """The folder's image processor config if it has one (as preprocessor_config.json or inside
    processor_config.json), else Janus's defaults at the vision encoder's side. The PIL backend
    always, so the pixels do not depend on whether torchvision is installed."""
    processor_config = directory / "processor_config.json"
    nested = processor_config.is_file() and "image_processor" in json.loads(processor_config.read_text("utf-8"))
    if nested or (directory / "preprocessor_config.json").is_file():
        return JanusImageProcessorPil.from_pretrained(directory, local_files_only=True)
    side = config.vision_config.image_size
    return JanusImageProcessorPil(size={"height": side, "width": side}, image_mean=list(SIGLIP_MEAN),
                                  image_std=list(SIGLIP_STD))


