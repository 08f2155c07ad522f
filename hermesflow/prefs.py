"""One preference record from curation to the loss, written and read here only.

A `Preference` holds, for one homologous record, the round it was curated in and both branches,
each either a pair (chosen over rejected, with scores and the rule that kept it) or a `Dropped`
with its reason. On disk it is one JSON line of `prefs.jsonl`:

    {"format", "id", "round", "caption",
     "und": {"chosen", "rejected", "chosen_score", "rejected_score", "reason", "samples"}
            or {"question", "chosen", "rejected", "chosen_score", "rejected_score", "reason", "samples"}
            or {"dropped", "samples"},
     "gen": {"chosen", "rejected" (image token ids), "chosen_score", "rejected_score", "reason",
             "ranked_by", "chosen_graded", "rejected_graded", "rejected_caption",
             "chosen_oracle", "rejected_oracle", "self_scores", "graded_scores", "oracle_scores"}
            or {"dropped", "self_scores", "graded_scores", "oracle_scores"}}

`*_score` and `self_scores` are hard self-VQA accuracies, `*_graded` and `graded_scores` the graded
self-score (mean probability the model gives the correct answers), `*_oracle` the world oracle's
accuracy (present only when the data has scenes it can judge). `ranked_by` says which of them chose
the pair: "self_accuracy", "self_graded" or "oracle" (a control, NOT self-curated).
`rejected_caption` is the perturbed caption the rejected image was drawn for, when it was.

The understanding pair is a caption pair (sentence-similarity scores), or, with "question", an
answer pair: the record's right answer to one of its questions over the model's strongest wrong
choice, scored by the model's probabilities of each (`--und-pairs answers`).

Format 1 (no "format" field) lacks the graded scores, `ranked_by` (it was "self_accuracy") and
`rejected_caption`; it is still read. Format 2 adds them. Format 3 adds answer pairs; a row without
one is written as format 2 (byte for byte as before), so only rows an older reader would misread
are refused by it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hermesflow.errors import DataError

PREFS = "prefs.jsonl"
FORMAT = 3
RANKED_BY = ("self_accuracy", "self_graded", "oracle")


@dataclass(frozen=True)
class Dropped:
    """A branch with no pair, and why (a selfplay reason, or "unscorable")."""

    reason: str


@dataclass(frozen=True)
class CaptionPair:
    """y_w over y_l: captions scored by sentence similarity to the record's caption."""

    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float
    reason: str


@dataclass(frozen=True)
class AnswerPair:
    """y_w over y_l as answers to `question` about the record's image: the record's right answer
    over the model's strongest wrong choice, each scored by the model's probability of it (a softmax
    over the question's choices)."""

    question: str
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float
    reason: str


@dataclass(frozen=True)
class ImagePair:
    """x_w over x_l: image token ids with their self-VQA accuracy (`*_score`), graded self-score
    and oracle accuracy (None when not measured), and which of them ranked the pair."""

    chosen: tuple[int, ...]
    rejected: tuple[int, ...]
    chosen_score: float
    rejected_score: float
    reason: str
    chosen_oracle: float | None = None
    rejected_oracle: float | None = None
    chosen_graded: float | None = None
    rejected_graded: float | None = None
    ranked_by: str = "self_accuracy"
    rejected_caption: str | None = None

    def __post_init__(self) -> None:
        if self.ranked_by not in RANKED_BY:
            raise ValueError(f"ranked_by must be one of {RANKED_BY}, got {self.ranked_by!r}")

    @property
    def self_curated(self) -> bool:
        return self.ranked_by != "oracle"


@dataclass(frozen=True)
class Preference:
    """Both branches of one record in one round."""

    id: str
    round: int
    caption: str
    und: CaptionPair | AnswerPair | Dropped
    gen: ImagePair | Dropped
    caption_samples: tuple[str, ...] = ()
    self_scores: tuple[float, ...] = ()
    oracle_scores: tuple[float, ...] | None = None
    graded_scores: tuple[float, ...] | None = None
    held_out_samples: int = 0  # sampled captions left out because they name a prompt held out of post-training
    extra: dict = field(default_factory=dict, compare=False)  # fields of other writers, kept on rewrite

    def has(self, branch: str) -> bool:
        return not isinstance(getattr(self, branch), Dropped)

    def to_json(self) -> dict:
        und = ({"dropped": self.und.reason} if isinstance(self.und, Dropped) else
               {"chosen": self.und.chosen, "rejected": self.und.rejected, "reason": self.und.reason,
                "chosen_score": self.und.chosen_score, "rejected_score": self.und.rejected_score})
        if isinstance(self.und, AnswerPair):
            und = {"question": self.und.question, **und}
        gen = ({"dropped": self.gen.reason} if isinstance(self.gen, Dropped) else
               {"chosen": list(self.gen.chosen), "rejected": list(self.gen.rejected), "reason": self.gen.reason,
                "chosen_score": self.gen.chosen_score, "rejected_score": self.gen.rejected_score})
        if isinstance(self.gen, ImagePair):
            gen["ranked_by"] = self.gen.ranked_by
            for name in ("chosen_oracle", "rejected_oracle", "chosen_graded", "rejected_graded", "rejected_caption"):
                if getattr(self.gen, name) is not None:
                    gen[name] = getattr(self.gen, name)
        und["samples"] = list(self.caption_samples)
        if self.held_out_samples:
            und["held_out_samples"] = self.held_out_samples
        gen["self_scores"] = list(self.self_scores)
        if self.graded_scores is not None:
            gen["graded_scores"] = list(self.graded_scores)
        if self.oracle_scores is not None:
            gen["oracle_scores"] = list(self.oracle_scores)
        version = FORMAT if isinstance(self.und, AnswerPair) else 2
        return {**self.extra, "format": version, "id": self.id, "round": self.round, "caption": self.caption, "und": und, "gen": gen}

    @classmethod
    def from_json(cls, obj: dict) -> "Preference":
        """Raises KeyError/TypeError/ValueError on a malformed row (`read_prefs` names the line).
        Rows without a "format" field are format 1 and read with the fields it had."""
        version = int(obj.get("format", 1))
        if version > FORMAT:
            raise ValueError(f"format {version} is newer than this hermesflow reads ({FORMAT}): upgrade hermesflow")
        und, gen = obj["und"], obj["gen"]
        if "dropped" in und:
            und_pair = Dropped(str(und["dropped"]))
        else:
            pair = (str(und["chosen"]), str(und["rejected"]), float(und["chosen_score"]), float(und["rejected_score"]),
                    str(und.get("reason", "unrecorded")))
            und_pair = AnswerPair(str(und["question"]), *pair) if "question" in und else CaptionPair(*pair)
        gen_pair = (Dropped(str(gen["dropped"])) if "dropped" in gen else
                    ImagePair(tuple(int(t) for t in gen["chosen"]), tuple(int(t) for t in gen["rejected"]),
                              float(gen["chosen_score"]), float(gen["rejected_score"]), str(gen.get("reason", "unrecorded")),
                              _maybe_float(gen.get("chosen_oracle")), _maybe_float(gen.get("rejected_oracle")),
                              _maybe_float(gen.get("chosen_graded")), _maybe_float(gen.get("rejected_graded")),
                              str(gen.get("ranked_by", "self_accuracy")),
                              None if gen.get("rejected_caption") is None else str(gen["rejected_caption"])))
        oracle, graded = gen.get("oracle_scores"), gen.get("graded_scores")
        known = {"format", "id", "round", "caption", "und", "gen"}
        return cls(str(obj["id"]), int(obj["round"]), str(obj["caption"]), und_pair, gen_pair,
                   tuple(str(c) for c in und.get("samples", ())), tuple(float(x) for x in gen.get("self_scores", ())),
                   None if oracle is None else tuple(float(x) for x in oracle),
                   None if graded is None else tuple(float(x) for x in graded),
                   int(und.get("held_out_samples", 0)), {k: v for k, v in obj.items() if k not in known})


def _maybe_float(value) -> float | None:
    return None if value is None else float(value)


def to_line(pref: Preference) -> str:
    return json.dumps(pref.to_json()) + "\n"


def read_lines(path: Path) -> list[Preference]:
    """Complete records of a (shard) file; a last line cut short by a kill is ignored (it is redone)."""
    prefs = []
    if path.exists():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                break
            try:
                prefs.append(Preference.from_json(obj))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise DataError([f"{path} line {number}: not a preference record ({type(e).__name__}: {e})"]) from None
    return prefs


def read_prefs(round_dir: Path) -> dict[str, Preference]:
    """The merged preference records of a finished round, by id."""
    path = Path(round_dir) / PREFS
    if not path.is_file():
        raise DataError([f"{path}: no preference file (has the round been curated?)"])
    return {p.id: p for p in read_lines(path)}
