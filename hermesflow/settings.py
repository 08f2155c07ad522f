"""The settings of every `hermesflow` verb, one dataclass each, every field documented.

A verb's own settings are its fields; the options of the components it runs are group fields
(`hermesflow.options`), handed to each component alone. They hold no logic and import nothing heavy,
so the command line can list them quickly. A setting appears as `--field-name` on the command line
and as `field_name:` in a `--config` YAML file (flat, or under its group's name).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hermesflow.config import group, option, preset_names
from hermesflow.options import (
    CHOICE_SCORE_HELP,
    DRAW_HELP,
    GUIDANCE_HELP,
    LONG_TEXT_HELP,
    ApiOptions,
    CurationOptions,
    DataOptions,
    EvalOptions,
    GRPOOptions,
    TrainingOptions,
)
from hermesflow.testbed.options import PretrainConfig  # noqa: F401 (the pretrain verb's settings, listed with the others)

DTYPE_HELP = "precision of sampling and scoring (weights), and of training (bf16 = mixed precision over fp32 weights)"
# the one-line help of the common flags several verbs share (`-h`; `--help-all` gives the full help)
OVERWRITE_BRIEF, CAPTION_BRIEF = "start again in an --out made with other settings", "the field holding the caption"
OVERWRITE_HELP = "delete results in --out made with other settings and start again (without it such a folder is refused)"


@dataclass
class WorldConfig:
    """`hermesflow world`: write a split of the shapes world as homologous data."""

    out: Path = option(None, "output folder (must not exist or be empty)", required=True)
    n: int = option(1000, "number of scenes", minimum=1)
    seed: int = option(0, "random seed; the same seed and split give the same files")
    split: str = option("train", "which split; train and eval never share a scene", choices=("train", "eval"))
    image_size: int = option(32, "image side in pixels, a multiple of 32 (the world drawn larger for a backbone that reads larger images)", minimum=32)
    prompts: str = option("auto", "seen: leave out the prompts held out of post-training (world/holdout.py), so that evaluation's unseen "
                          "prompts stay unseen when you post-train on this data; all: every prompt; auto: seen for --split train, all for eval",
                          choices=("auto", "seen", "all"))


@dataclass
class ValidateConfig:
    """`hermesflow validate DATA`: check homologous data (JSON Lines, datasets folder, Parquet, imagefolder) and summarise it."""

    data: Path = option(None, "data.jsonl, or a folder holding it", positional=True, required=True)
    image_size: int = option(0, "expected image width and height in pixels; 0 accepts any size")
    model: Path = option(None, "also check the data against this model folder: what eval, curate and run would refuse "
                         "(unknown words, texts too long, images it cannot read); --skip-bad skips those records too")
    write_clean: Path = option(None, "with --skip-bad: write the good records' lines to this new JSON Lines file, beside the data "
                               "file (so its image paths still resolve)")
    reading: DataOptions = group(DataOptions, "data reading")


@dataclass
class EvalConfig:
    """`hermesflow eval`: Table 4 and Table 2 analogs for a model, on the world's eval split or your data."""

    COMMON = {"model": "model folder", "out": "output folder; the same command again resumes it",
              "n": "eval scenes (or the first n records of --data)", "data": "your data (with questions) instead of the world's",
              "caption_column": CAPTION_BRIEF, "questions": "question file for records without questions",
              "judge": "who judges generated images: auto or vlm (--endpoint)", "draw": "the world's selection or test draw",
              "dtype": "fp32 or bf16", "seed": "seed of the eval split and of sampling",
              "overwrite": OVERWRITE_BRIEF}

    judge: str = option("auto", "who answers the questions about generated images: auto (the world oracle when every "
                        "record has a scene, else the model itself); vlm (a VLM behind --endpoint, e.g. GPT-4o as in the paper)",
                        choices=("auto", "vlm"))

    model: Path = option(None, "model folder (save_pretrained format)", required=True)
    out: Path = option(None, "output folder for metrics.json and a sample sheet", required=True)
    n: int = option(1000, "eval examples (world eval split scenes, or the first n records of --data)", minimum=1)
    choice_score: str = option("sum", CHOICE_SCORE_HELP, choices=("sum", "mean"))
    draw: str = option("test", DRAW_HELP, choices=("selection", "test"))
    data: Path = option(None, "homologous data with qa to evaluate on instead of the world's eval split")
    seed: int = option(0, "seed of the eval split and of sampling")
    steps: int = option(10, "MaskGIT decoding steps", minimum=1)
    guidance: float | None = option(None, GUIDANCE_HELP, minimum=0.0)
    temperature: float = option(1.0, "sampling temperature for generation", minimum=0.0)
    long_text: str = option("truncate", LONG_TEXT_HELP, choices=("truncate", "refuse"), changes_results=False)
    encoder: Path = option(None, "local sentence encoder folder for caption similarity (default: shipped MiniLM-L6)")
    dtype: str = option("fp32", "precision of the model's weights while evaluating", choices=("fp32", "bf16"))
    overwrite: bool = option(False, OVERWRITE_HELP, changes_results=False)
    reading: DataOptions = group(DataOptions, "data reading")
    api: ApiOptions = group(ApiOptions, "api (--judge vlm)")


@dataclass
class CurateConfig:
    """`hermesflow curate`: build one round of homologous preference data with the model itself."""

    COMMON = {"model": "model folder", "data": "homologous data with questions", "out": "round folder; the same command again resumes it",
              "caption_column": CAPTION_BRIEF, "questions": "question file for records without questions",
              "previous": "the previous round's folder (self-play, Eq. 10)", "round": "round number",
              "n_captions": "captions sampled per record", "n_images": "images sampled per record", "dtype": "fp32 or bf16",
              "seed": "seed of sampling", "overwrite": OVERWRITE_BRIEF}

    model: Path = option(None, "model folder", required=True)
    data: Path = option(None, "homologous data (data.jsonl or its folder) with qa", required=True)
    out: Path = option(None, "round folder for prefs.jsonl and manifest.json", required=True)
    previous: Path = option(None, "the previous round's folder, for the self-play update (Eq. 10)")
    round: int = option(1, "round number, as in a run's round-N folders: 1 pairs each record's best and worst samples, "
                        "later rounds update the --previous round's pairs (Eq. 10)", minimum=1)
    seed: int = option(0, "seed of sampling")
    dtype: str = option("fp32", DTYPE_HELP, choices=("fp32", "bf16"))
    long_text: str = option("truncate", LONG_TEXT_HELP, choices=("truncate", "refuse"), changes_results=False)
    overwrite: bool = option(False, OVERWRITE_HELP, changes_results=False)
    curation: CurationOptions = group(CurationOptions, "curation")
    reading: DataOptions = group(DataOptions, "data reading")


@dataclass
class TrainConfig:
    """`hermesflow train`: Pair-DPO on one curated round."""

    COMMON = {"model": "starting model folder (also the reference)", "data": "the data the round was curated from",
              "prefs": "round folder holding prefs.jsonl", "out": "output folder; the same command again resumes it",
              "loss_type": "Eq. 12's sum, Eq. 6's product, one branch, or joint", "train_steps": "optimizer steps",
              "batch_size": "pairs per step", "lr": "learning rate", "lora_r": "LoRA rank; 0 trains every weight",
              "dtype": "fp32, or bf16 mixed precision", "seed": "seed of batch order and masks",
              "overwrite": OVERWRITE_BRIEF}

    model: Path = option(None, "policy's starting model folder (also the reference)", required=True)
    data: Path = option(None, "the homologous data the round was curated from", required=True)
    prefs: Path = option(None, "round folder holding prefs.jsonl", required=True)
    out: Path = option(None, "output folder for the trained model, metrics.jsonl and the training state", required=True)
    seed: int = option(0, "seed of batch order and mask seeds")
    dtype: str = option("fp32", "fp32, or bf16 mixed precision over fp32 weights", choices=("fp32", "bf16"))
    overwrite: bool = option(False, OVERWRITE_HELP, changes_results=False)
    training: TrainingOptions = group(TrainingOptions, "training")
    reading: DataOptions = group(DataOptions, "data reading")


@dataclass
class RunConfig:
    """`hermesflow run` / `iterate`: evaluate the base model, then R self-play rounds of curate, train, evaluate."""

    PRESETS = "run"
    SECTIONS = {"run": ("out", "preset", "rounds", "seed", "overwrite"), "model": ("model", "dtype", "long_text", "base_eval"),
                "data": ("data", "n_train")}
    COMMON = {"out": "run folder; the same command again resumes it", "preset": "quick (minutes), default, or paper (the paper's recipe)",
              "model": "base model folder (default: the shipped base)",
              "data": "your homologous data (default: world train records)",
              "n_train": "world train records when --data is not given", "caption_column": CAPTION_BRIEF,
              "questions": "question file for records without questions (`hermesflow questions` writes one)",
              "rounds": "self-play rounds", "n_captions": "captions sampled per record", "n_images": "images sampled per record",
              "train_steps": "optimizer steps per round", "lr": "learning rate", "lora_r": "LoRA rank; 0 trains every weight",
              "eval_n": "eval scenes (or records of --eval-data)", "eval_data": "your data to evaluate on instead of the world's",
              "base_eval": "a `hermesflow eval` folder of the base model, reused if its settings match",
              "judge": "who judges generated images: auto or vlm (--endpoint)", "dtype": "fp32, or bf16 mixed precision",
              "seed": "seed of everything", "overwrite": OVERWRITE_BRIEF}

    out: Path = option(None, "run folder", required=True, changes_results=False)
    preset: str = option("default", "default: the built-in model's recipe; paper: the paper's Show-o recipe (AdamW lr 2e-5, "
                         "β 0.2, no NLL terms, batch 4, 3000 steps, 10 captions and 16 images, guidance 5, 50 steps); "
                         "each a file in hermesflow/presets/run/", choices=preset_names("run"), changes_results=False)
    model: Path = option(None, "base model folder (default: the shipped base checkpoint)")
    data: Path = option(None, "homologous train data (default: a held-out slice of the world's train split)")
    rounds: int = option(1, "self-play rounds", minimum=0, changes_results=False)
    base_eval: Path = option(None, "a finished `hermesflow eval` folder of the base model to use as the run's base evaluation "
                             "instead of evaluating again; refused, naming the difference, unless its model, items, draw, seed, "
                             "judge and sampling settings are the run's", changes_results=False)
    n_train: int = option(400, "world train records to curate from when --data is not given", minimum=1)
    seed: int = option(0, "seed of everything")
    dtype: str = option("fp32", DTYPE_HELP, choices=("fp32", "bf16"))
    long_text: str = option("truncate", LONG_TEXT_HELP, choices=("truncate", "refuse"), changes_results=False)
    overwrite: bool = option(False, OVERWRITE_HELP, changes_results=False)
    reading: DataOptions = group(DataOptions, "data reading")
    curation: CurationOptions = group(CurationOptions, "curation")
    training: TrainingOptions = group(TrainingOptions, "training")
    grpo: GRPOOptions = group(GRPOOptions, "grpo")
    eval: EvalOptions = group(EvalOptions, "evaluation")
    api: ApiOptions = group(ApiOptions, "api (--judge vlm)")


@dataclass
class ReportConfig:
    """`hermesflow report RUN_DIR`: a static HTML page of a run's tables, plots and preference pairs."""

    run: Path = option(None, "the folder made by `hermesflow run`, `iterate` or `ablate`", positional=True, required=True)
    gallery: int = option(8, "preference pairs shown from the last round", minimum=0)


@dataclass
class StatusConfig:
    """`hermesflow status DIR`: the stage a run, ablation or evaluation folder is in, what is done, and what a rerun would reuse."""

    run: Path = option(None, "the folder made by `hermesflow run`, `iterate`, `ablate` or `eval`", positional=True, required=True)


@dataclass
class PlanConfig:
    """`hermesflow plan`: the memory one training process needs (weights, gradients, AdamW state, reference,
    activations) and the largest batch that fits, from the model built on the meta device, before a run."""

    model: str = option(None, "a model folder, or a published config: janus-pro-1b, janus-pro-7b, show-o, show-o-512 "
                        "(hermesflow/presets/models/)", required=True)
    dtype: str = option("bf16", "precision of the weights as loaded and of the forward (bf16: mixed precision over fp32 "
                        "trained weights)", choices=("fp32", "bf16"))
    lora_r: int = option(0, "LoRA rank; 0 trains every weight", minimum=0)
    sharding: str = option("ddp", "ddp or fsdp (weights, gradients and AdamW state split over the processes)", choices=("ddp", "fsdp"))
    processes: int = option(1, "processes (GPUs) training together", minimum=1)
    batch_size: int = option(8, "global batch (split across processes)", minimum=1)
    reference: str = option("online", "online: full fine-tuning keeps a frozen copy as the reference (the default, per-step "
                            "image masks); cached: none (--mask-draws round)", choices=("online", "cached"))
    gpu_memory: float = option(0.0, "memory per process in GB: also print the largest --batch-size that fits (0: do not)", minimum=0.0)


@dataclass
class AblateConfig:
    """`hermesflow ablate`: recipes compared fairly with seeds and paired intervals; by default the paper's Table 5
    arms (one-branch DPO, Pair-DPO sum and product, rounds 2-3), or the arms of a YAML file (--arms)."""

    PRESETS = "ablate"
    SECTIONS = {"ablation": ("out", "arms", "control", "preset", "seeds", "seed", "overwrite"), "model": ("model", "dtype", "long_text"),
                "data": ("n_train",), "evaluation": ("eval_n", "eval_guidance", "eval_draw")}
    COMMON = {"out": "ablation folder; the same command again resumes it", "arms": "YAML file of arms (e.g. experiments/recipes.yaml)",
              "control": "the arm the others are compared with, seed by seed", "preset": "quick or full (seeds, records, eval scenes)",
              "seeds": "seeds per arm (0: the preset's)", "n_train": "world train records to curate (0: the preset's)",
              "eval_n": "eval scenes (0: the preset's)", "eval_draw": "selection (to choose) or test (to report)",
              "model": "base model folder (default: the shipped base)", "dtype": "fp32, or bf16 mixed precision",
              "overwrite": OVERWRITE_BRIEF}

    out: Path = option(None, "ablation folder", required=True, changes_results=False)
    arms: Path = option(None, "YAML file of arms: name: {setting: value, ..., rounds: N} (settings of the training and curation "
                        "options; e.g. experiments/recipes.yaml); none: the paper's Table 5 arms")
    control: str = option(None, "the arm every other arm is compared with, seed by seed on the same items (their paired "
                          "difference, not overlapping intervals); default: an arm that changes no setting (the default recipe), "
                          "if the arms have one", changes_results=False)
    preset: str = option("quick", "quick: 3 seeds, 200 records, 500 eval scenes; full: 5 seeds, 400 records, 1000 scenes "
                         "(hermesflow/presets/ablate/)", choices=preset_names("ablate"), changes_results=False)
    model: Path = option(None, "base model folder (default: the shipped base checkpoint)")
    seeds: int = option(0, "seeds per arm; 0 takes the preset's", minimum=0, unset=0)
    n_train: int = option(0, "world train records to curate; 0 takes the preset's", minimum=0, unset=0)
    eval_n: int = option(0, "eval scenes per evaluation; 0 takes the preset's", minimum=0, unset=0)
    eval_guidance: float | None = option(None, "guidance w when evaluating generation; default: the backbone's own, as --guidance", minimum=0.0)
    eval_draw: str = option("selection", DRAW_HELP + "; an ablation compares, so selection", choices=("selection", "test"))
    seed: int = option(0, "seed of the data and of round-0 curation")
    dtype: str = option("fp32", DTYPE_HELP, choices=("fp32", "bf16"))
    long_text: str = option("truncate", LONG_TEXT_HELP, choices=("truncate", "refuse"), changes_results=False)
    overwrite: bool = option(False, OVERWRITE_HELP, changes_results=False)
    curation: CurationOptions = group(CurationOptions, "curation")
    training: TrainingOptions = group(TrainingOptions, "training")
    grpo: GRPOOptions = group(GRPOOptions, "grpo")


@dataclass
class QuestionsConfig:
    """`hermesflow questions`: TIFA-format questions for the captions that have none (scene graph or an LLM endpoint)."""

    data: Path = option(None, "homologous data (any format --data reads)", required=True)
    out: Path = option(None, "the TIFA-format question file to write (give it to other verbs as --questions)", required=True)
    source: str = option("llm", "scene: the world's scene graph (exact); llm: a language model behind --endpoint", choices=("scene", "llm"))
    redo: bool = option(False, "ask for every record, also those that already have questions")
    reading: DataOptions = group(DataOptions, "data reading")
    api: ApiOptions = group(ApiOptions, "api")


@dataclass
class ExportConfig:
    """`hermesflow export geneval|dpg`: a model's images in GenEval's or DPG-Bench's layout, for their own evaluators."""

    benchmark: str = option(None, "geneval: --prompts evaluation_metadata.jsonl, writes OUT/NNNNN/{metadata.jsonl, samples/NNNN.png}; "
                            "dpg: --prompts a folder of <item_id>.txt, writes OUT/<item_id>.png (a 2x2 grid of 4 images)",
                            positional=True, required=True, choices=("geneval", "dpg"))
    model: Path = option(None, "model folder", required=True)
    prompts: Path = option(None, "the benchmark's prompt file (GenEval) or prompt folder (DPG-Bench)", required=True)
    out: Path = option(None, "image folder to write (a rerun finishes what is missing)", required=True)
    n: int = option(4, "images per prompt (GenEval's default 4; DPG-Bench 4 as a 2x2 grid, or 1)", minimum=1)
    seed: int = option(0, "seed; prompt i is drawn with seed + i")
    steps: int = option(10, "MaskGIT decoding steps (autoregressive backbones ignore it)", minimum=1)
    guidance: float | None = option(None, GUIDANCE_HELP, minimum=0.0)
    temperature: float = option(1.0, "sampling temperature", minimum=0.0)
    long_text: str = option("truncate", LONG_TEXT_HELP, choices=("truncate", "refuse"), changes_results=False)
    dtype: str = option("fp32", "precision of the model's weights", choices=("fp32", "bf16"))


@dataclass
class AnswerConfig:
    """`hermesflow answer pope`: a model's answers to POPE's questions in POPE's format, with its accuracy, precision, recall, F1 and yes-ratio."""

    benchmark: str = option(None, "pope: --questions a POPE JSON Lines file of {question_id, image, text, label}", positional=True,
                            required=True, choices=("pope",))
    model: Path = option(None, "model folder", required=True)
    questions: Path = option(None, "the benchmark's question file", required=True)
    images: Path = option(None, "folder of the images the questions name (COCO val2014 for POPE's COCO sets)", required=True)
    out: Path = option(None, "folder for answers.jsonl (POPE's answer format) and metrics.json", required=True)
    batch_size: int = option(16, "questions per batch", minimum=1)
    choice_score: str = option("sum", CHOICE_SCORE_HELP, choices=("sum", "mean"))
    dtype: str = option("fp32", "precision of the model's weights", choices=("fp32", "bf16"))


@dataclass
class ImportOfficialConfig:
    """`hermesflow import-official FILE`: check the official repository's pair_dpo_data.json, report ties, write its pairs as JSON Lines."""

    file: Path = option(None, "pair_dpo_data.json as written by Gen-Verse/HermesFlow (array, trailing comma, or raw stream)", positional=True, required=True)
    out: Path = option(None, "JSON Lines of the checked pairs under our names (caption_chosen, image_rejected_score, ...); none = check only")


@dataclass
class ConvertShowoConfig:
    """`hermesflow convert-showo SRC DST`: the official Show-o checkpoint (with its MAGVIT-v2 and Phi-1.5
    tokenizer folders) as a HermesFlow model folder in safetensors, read without unpickling code."""

    src: Path = option(None, "the official show-o or show-o-512x512 folder", positional=True, required=True)
    dst: Path = option(None, "the new model folder", positional=True, required=True)
    magvit: Path = option(None, "the magvitv2 folder (default: SRC/magvitv2 or a magvitv2 folder beside SRC)")
    tokenizer: Path = option(None, "Phi-1.5's tokenizer folder (default: SRC if it holds one, else a phi-1_5 folder beside SRC)")
    max_seq_length: int = option(128, "the text slot of text-to-image sequences the checkpoint was trained with", minimum=1)
    magvit_config: Path = option(None, "the image tokenizer's sizes as JSON (ch, encoder_ch_mult, encoder_res_blocks, "
                                 "decoder_ch_mult, decoder_res_blocks, bits); default: read from its weights' shapes")

