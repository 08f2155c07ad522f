"""The shapes world: a procedural image world with GenEval-style prompts, TIFA-style questions and
an exact oracle, so the whole method runs and is judged exactly on a CPU with no downloads."""

from hermesflow.world.oracle import answer, classify_cells, parse, parse_batch, satisfies
from hermesflow.world.prompts import CATEGORIES, PromptSpec, parse_prompt, phrase, sample_scene, satisfied_by
from hermesflow.world.questions import QUESTION_TYPES, answer_on_scene, questions_for
from hermesflow.world.render import render, upscale
from hermesflow.world.scenes import IMAGE_SIZE, Obj, Scene, relation

__all__ = [
    "CATEGORIES", "IMAGE_SIZE", "QUESTION_TYPES", "Obj", "PromptSpec", "Scene", "answer",
    "answer_on_scene", "classify_cells", "parse", "parse_batch", "parse_prompt", "phrase",
    "questions_for", "relation", "render", "sample_scene", "satisfied_by", "satisfies", "upscale",
]
