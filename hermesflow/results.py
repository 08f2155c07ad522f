"""What an evaluation found, typed: `Evaluation`, written to and read from `metrics.json`.

`evaluate.evaluate` makes one, a data set's world adds its own numbers to it (`World.metrics`: the
prompts held out of post-training scored apart as `unseen` and `seen`, GenEval-style categories), and
the report, `ablate` and the CLI read it. `to_json` writes the file's keys in their established names
and order (`understanding_score_unseen`, `geneval_counts_seen`, ...), so files written before the type
existed read back unchanged, and `from_json` names the file and the key when one is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from hermesflow.errors import UsageError

REQUIRED = ("n_examples", "n_questions", "judges", "understanding_score", "generation_score", "gap", "understanding_prior",
            "understanding_by_type", "generation_by_type", "understanding_prior_by_type", "per_example")
SCORES_NOTE = "per question; intervals clustered by image (ratio estimator); *_per_image: per-image means"


@dataclass(frozen=True)
class Interval:
    """A mean with its 95% interval."""

    mean: float
    ci95: tuple[float, float]

    @classmethod
    def of(cls, value: dict | None) -> Interval | None:
        return None if value is None else cls(value["mean"], tuple(value["ci95"]))

    def to_json(self) -> dict:
        return {"mean": self.mean, "ci95": list(self.ci95)}


@dataclass(frozen=True)
class PerExample:
    """Per eval item, in item order: what paired differences between evaluations of the same items
    need. `questions` is None in metrics written before per-question counts were recorded; `unseen`
    and `category` are filled by a world (None per item where it has no say)."""

    ids: list[str]
    understanding: list[float]  # the share of the item's questions answered right
    generation: list[float]  # the share the judge answered right about the item's generated image
    questions: list[int] | None = None
    understanding_correct: list[int] | None = None
    generation_correct: list[int] | None = None
    unseen: list[bool | None] | None = None
    category: list[str | None] | None = None

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def reordered(self, ids: list[str]) -> PerExample:
        """The same items in the order of `ids` (which must hold exactly these items)."""
        where = {item: i for i, item in enumerate(self.ids)}
        order = [where[item] for item in ids]
        return replace(self, **{f.name: [getattr(self, f.name)[i] for i in order]
                                for f in fields(self) if getattr(self, f.name) is not None})


@dataclass(frozen=True)
class Part:
    """Scores over a part of the items (the world's prompts held out of post-training, or the rest)."""

    n_examples: int
    understanding_score: Interval | None
    generation_score: Interval | None
    gap: Interval | None
    geneval: dict[str, float] | None = None  # where the oracle judged the images
    geneval_counts: dict[str, list[int]] | None = None


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a model on eval items: the paper's Table 4 (understanding, generation, gap)
    per question with intervals clustered by image, their per-image means, the blank-image prior,
    per question type, per item, and (where a world judged) GenEval-style categories and the
    held-out prompts scored apart. `judges` names what made each number."""

    n_examples: int
    n_questions: int
    judges: dict[str, str]  # {"understanding": ..., "generation": "oracle" | "self" | "vlm:<model>"}
    understanding_score: Interval
    generation_score: Interval
    gap: Interval
    understanding_prior: float
    understanding_by_type: dict[str, float]
    generation_by_type: dict[str, float]
    understanding_prior_by_type: dict[str, float]
    per_example: PerExample
    sample_prompts: list[str]  # the prompts of the sample sheet's images, in order
    settings: dict  # how the images were drawn
    # per-image means (None in metrics written before scores were per question)
    understanding_score_per_image: Interval | None = None
    generation_score_per_image: Interval | None = None
    gap_per_image: Interval | None = None
    understanding_prior_per_image: float | None = None
    caption_similarity: Interval | None = None
    caption_examples: list[dict] | None = None
    # the world's: which prompts post-training held out, and the two parts scored apart
    prompt_holdout: dict | None = None
    unseen_categories: list[str] | None = None
    unseen: Part | None = None
    seen: Part | None = None
    geneval: dict[str, float] = field(default_factory=dict)
    geneval_counts: dict[str, list[int]] = field(default_factory=dict)  # [prompts satisfied, prompts] per category
    extra: dict = field(default_factory=dict)  # what a caller adds: the model's path, the judge's API usage

    @property
    def warnings(self) -> list[str]:
        """Numbers at chance, said so that they never look like results: understanding whose 95% interval
        holds the blank-image prior, and self-judged generation equal to understanding answer for answer."""
        said = []
        lo, hi = self.understanding_score.ci95
        if lo <= self.understanding_prior <= hi:
            said.append(f"understanding is at chance: the blank-image prior {self.understanding_prior:.3f} lies inside its 95% "
                        f"interval [{lo:.3f}, {hi:.3f}], so the model's answers do not depend on the image")
        per = self.per_example
        if self.judges.get("generation") == "self" and per.understanding_correct is not None \
                and per.understanding_correct == per.generation_correct:
            said.append("understanding and self-judged generation are identical answer for answer: the model answers alike "
                        "about real and generated images, so generation's number says nothing of its images")
        return said

    @property
    def generation_unseen(self) -> Interval | None:
        """Generation on the prompts held out of post-training, where claims about generation are read."""
        return self.unseen.generation_score if self.unseen else None

    def to_json(self) -> dict:
        out = {"n_examples": self.n_examples, "n_questions": self.n_questions, "judges": self.judges, "scores": SCORES_NOTE}
        for name in ("understanding_score", "generation_score", "gap"):
            out[name] = getattr(self, name).to_json()
        out["understanding_prior"] = self.understanding_prior
        if self.understanding_score_per_image is not None:
            for name in ("understanding_score_per_image", "generation_score_per_image", "gap_per_image"):
                out[name] = getattr(self, name).to_json()
            out["understanding_prior_per_image"] = self.understanding_prior_per_image
        for name in ("understanding_by_type", "generation_by_type", "understanding_prior_by_type"):
            out[name] = getattr(self, name)
        out["per_example"] = self.per_example.to_json()
        out["sample_prompts"] = self.sample_prompts
        if self.caption_similarity is not None:
            out["caption_similarity"] = self.caption_similarity.to_json()
            out["caption_examples"] = self.caption_examples
        out["settings"] = self.settings
        if self.prompt_holdout is not None:
            out["prompt_holdout"] = self.prompt_holdout
            out["unseen_categories"] = self.unseen_categories
            for suffix, part in (("unseen", self.unseen), ("seen", self.seen)):
                out[f"n_examples_{suffix}"] = part.n_examples
                for name in ("understanding_score", "generation_score", "gap"):
                    value = getattr(part, name)
                    out[f"{name}_{suffix}"] = None if value is None else value.to_json()
            for suffix, part in (("unseen", self.unseen), ("seen", self.seen)):
                if part.geneval is not None:
                    out[f"geneval_{suffix}"], out[f"geneval_counts_{suffix}"] = part.geneval, part.geneval_counts
        out["geneval"], out["geneval_counts"] = self.geneval, self.geneval_counts
        if self.warnings:
            out["warnings"] = self.warnings
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: dict, where: str = "metrics") -> Evaluation:
        """An evaluation from `to_json`'s dict (or a metrics.json written before this type); a missing
        key is refused naming `where`."""
        missing = [key for key in REQUIRED if key not in data]
        if missing:
            raise UsageError(f"{where}: no {', '.join(map(repr, missing))}; not an evaluation's metrics.json (evaluate again)")
        per = data["per_example"]
        known = {f.name for f in fields(PerExample)}
        parts = {}
        if "prompt_holdout" in data:
            for suffix in ("unseen", "seen"):
                parts[suffix] = Part(
                    data[f"n_examples_{suffix}"],
                    *(Interval.of(data.get(f"{name}_{suffix}")) for name in ("understanding_score", "generation_score", "gap")),
                    data.get(f"geneval_{suffix}"), data.get(f"geneval_counts_{suffix}"))
        listed = {f.name for f in fields(cls)} | {"scores", "warnings"} | {f"{k}_{s}" for s in ("unseen", "seen") for k in
                  ("n_examples", "understanding_score", "generation_score", "gap", "geneval", "geneval_counts")}
        return cls(
            n_examples=data["n_examples"], n_questions=data["n_questions"], judges=data["judges"],
            understanding_score=Interval.of(data["understanding_score"]), generation_score=Interval.of(data["generation_score"]),
            gap=Interval.of(data["gap"]), understanding_prior=data["understanding_prior"],
            understanding_score_per_image=Interval.of(data.get("understanding_score_per_image")),
            generation_score_per_image=Interval.of(data.get("generation_score_per_image")),
            gap_per_image=Interval.of(data.get("gap_per_image")), understanding_prior_per_image=data.get("understanding_prior_per_image"),
            understanding_by_type=data["understanding_by_type"], generation_by_type=data["generation_by_type"],
            understanding_prior_by_type=data["understanding_prior_by_type"],
            per_example=PerExample(**{k: v for k, v in per.items() if k in known}),
            sample_prompts=data.get("sample_prompts", []), settings=data.get("settings", {}),
            caption_similarity=Interval.of(data.get("caption_similarity")), caption_examples=data.get("caption_examples"),
            prompt_holdout=data.get("prompt_holdout"), unseen_categories=data.get("unseen_categories"),
            unseen=parts.get("unseen"), seen=parts.get("seen"),
            geneval=data.get("geneval", {}), geneval_counts=data.get("geneval_counts", {}),
            extra={k: v for k, v in data.items() if k not in listed})

    @classmethod
    def read(cls, path: Path) -> Evaluation:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: cannot read an evaluation ({e})") from None
        if not isinstance(data, dict):
            raise UsageError(f"{path}: not an evaluation's metrics (expected a JSON object)")
        return cls.from_json(data, str(path))

