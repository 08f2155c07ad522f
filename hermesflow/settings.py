"""The settings of every `hermesflow` verb, one dataclass each, every field documented.

They hold no logic and import nothing heavy, so the command line can list them quickly. A field
appears as `--field-name` on the command line and as `field_name:` in a `--config` YAML file.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from hermesflow.config import option


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
class DataOptions:
    """How homologous data is read: JSON Lines, a datasets folder, Parquet or an imagefolder (DESIGN §6)."""

    id_column: str = option("id", "the field holding each record's id; a table without it uses the row index (an imagefolder: the file name)")
    image_column: str = option("image", "the field holding the image: a path relative to the data, or image bytes (an imagefolder: file_name)")
    caption_column: str = option("caption", "the field holding the caption")
    qa_column: str = option("qa", "the field holding the questions [{question, choices, answer, type}] (a list, or JSON text)")
    follow_symlinks: bool = option(False, "follow symbolic links that leave the data folder (a dataset cache); '..' and absolute paths stay refused")
    questions: Path = option(None, "a TIFA-format question file for the records without questions, matched by id (`hermesflow questions` writes one)")
    skip_bad: bool = option(False, "report bad records (one line each) and go on without them instead of failing")


@dataclass
class ApiOptions:
    """An OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama, a hosted API); the key is read
    from an environment variable and never written anywhere."""

    endpoint: str = option("", "base URL of the endpoint, e.g. http://127.0.0.1:8000/v1 (POST {endpoint}/chat/completions)")
    api_model: str = option("", "the model name the endpoint serves")
    api_key_env: str = option("OPENAI_API_KEY", "environment variable holding the API key (unset: no key sent)")
    timeout: float = option(60.0, "seconds to wait for one reply before trying again", minimum=0.001)
    retries: int = option(4, "attempts after the first one (timeouts, 429, 5xx, refused connections, unusable replies)", minimum=0)
    backoff: float = option(1.0, "seconds before the first retry, doubling after each (a 429's Retry-After wins)", minimum=0.0)
    json_schema: bool = option(True, "ask for replies constrained by a JSON schema (response_format); turn off for servers without it")
    workers: int = option(4, "requests in flight at once (answers keep their order; the first failure stops the run)", minimum=1)
    api_cache: Path = option(None, "JSON Lines cache of accepted replies (default: beside the output); a rerun asks nothing twice")


@dataclass
class ValidateConfig(DataOptions):
    """`hermesflow validate DATA`: check homologous data (JSON Lines, datasets folder, Parquet, imagefolder) and summarise it."""

    data: Path = option(None, "data.jsonl, or a folder holding it", positional=True, required=True)
    image_size: int = option(0, "expected image width and height in pixels; 0 accepts any size")
    write_clean: Path = option(None, "with --skip-bad: write the good records' lines to this new JSON Lines file, beside the data "
                               "file (so its image paths still resolve)")


PRESETS = {
    # micro: for tests, about a minute on 2 cores
    "micro": dict(d_model=64, n_layers=2, n_heads=2, steps=400, batch_size=48, lr=2e-3),
    # default: the shipped base model
    "default": dict(d_model=256, n_layers=6, n_heads=4, steps=3000, batch_size=64, lr=1e-3),
}


@dataclass
class PretrainConfig:
    """`hermesflow pretrain`: train the built-in unified model from scratch on the shapes world."""

    out: Path = option(None, "output folder: the model, its checkpoint and metrics.jsonl", required=True)
    preset: str = option("default", "model size and schedule", choices=tuple(PRESETS))
    steps: int = option(0, "optimizer steps; 0 takes the preset's", minimum=0)
    batch_size: int = option(0, "examples per step, split evenly across the three tasks; 0 takes the preset's", minimum=0)
    lr: float = option(0.0, "peak AdamW learning rate; 0 takes the preset's", minimum=0.0)
    weight_decay: float = option(0.01, "AdamW weight decay", minimum=0.0)
    warmup: int = option(100, "linear warm-up steps before the cosine decay")
    cond_dropout: float = option(0.1, "share of text-to-image prompts replaced by the empty prompt (for guidance)", minimum=0.0, maximum=1.0)
    caption_noise: float = option(0.3, "share of captions (text-to-image and captioning) with one attribute wrong, like web alt-text; "
                                  "0.3 made the shipped base (experiments/zero.md)", minimum=0.0, maximum=1.0)
    bf16: bool = option(True, "bfloat16 autocast (about 1.8x faster on this CPU than fp32)")
    checkpoint_every: int = option(250, "steps between resumable checkpoints", minimum=1)
    seed: int = option(0, "seed of the data stream, the masks and the initial weights")


@dataclass
class EvalConfig(DataOptions, ApiOptions):
    """`hermesflow eval`: Table 4 and Table 2 analogs for a model, on the world's eval split or your data."""

    judge: str = option("auto", "who answers the questions about generated images: auto (the world oracle when every "
                        "record has a scene, else the model itself); vlm (a VLM behind --endpoint, e.g. GPT-4o as in the paper)",
                        choices=("auto", "vlm"))

    model: Path = option(None, "model folder (save_pretrained format)", required=True)
    out: Path = option(None, "output folder for metrics.json and a sample sheet", required=True)
    n: int = option(1000, "eval examples (world eval split scenes, or the first n records of --data)", minimum=1)
    data: Path = option(None, "homologous data with qa to evaluate on instead of the world's eval split")
    seed: int = option(0, "seed of the eval split and of sampling")
    steps: int = option(10, "MaskGIT decoding steps", minimum=1)
    guidance: float = option(2.0, "classifier-free guidance scale w in (1 + w) cond - w uncond", minimum=0.0)
    temperature: float = option(1.0, "sampling temperature for generation", minimum=0.0)
    encoder: Path = option(None, "local sentence encoder folder for caption similarity (default: shipped MiniLM-L6)")
    dtype: str = option("fp32", "precision of the model's weights while evaluating", choices=("fp32", "bf16"))
    overwrite: bool = option(False, "delete results in --out made with other settings and start again (without it such a folder is refused)")


@dataclass
class CurationOptions:
    """How the model samples and judges its own candidates (paper §3.1)."""

    n_captions: int = option(8, "captions sampled per image (official code: 10)", minimum=1)
    caption_temperature: float = option(1.0, "sampling temperature for captions", minimum=0.0)
    caption_top_k: int = option(0, "top-k for caption sampling; 0 = off", minimum=0)
    n_images: int = option(16, "images generated per caption (official code: 16)", minimum=1)
    steps: int = option(10, "MaskGIT decoding steps", minimum=1)
    guidance: float = option(2.0, "classifier-free guidance w for generation, (1 + w) cond - w uncond", minimum=0.0)
    image_temperature: float = option(1.0, "sampling temperature for generation", minimum=0.0)
    min_chosen_accuracy: float = option(0.6, "a generated winner is kept only if its self-VQA accuracy is above this", minimum=0.0, maximum=1.0)
    image_score: str = option("hard", "how the model ranks its images: hard (self-VQA accuracy, ties at the top are common) or graded "
                              "(mean probability of the correct answers under its own multiple-choice scores); the threshold stays on the accuracy",
                              choices=("hard", "graded"))
    pair_source: str = option("self", "self: the model ranks its images; oracle: the world's exact oracle ranks them, a control that is "
                              "NOT self-curated (records need world scenes)", choices=("self", "oracle"))
    rejected_from: str = option("samples", "samples: the worst sample is rejected; perturbed: an image drawn for the caption with one "
                                "attribute swapped (colour, shape, count or relation; world-phrased captions only)",
                                choices=("samples", "perturbed"))
    curate_batch_size: int = option(16, "records per curation batch", minimum=1)
    encoder: Path = option(None, "local sentence encoder folder for caption similarity (default: shipped MiniLM-L6)")
    pooling: str = option("mean", "sentence encoder pooling", choices=("mean", "cls"))
    dtype: str = option("fp32", "precision of sampling and scoring (weights), and of training (bf16 = mixed precision over fp32 weights)",
                        choices=("fp32", "bf16"))


@dataclass
class TrainingOptions:
    """Pair-DPO and its optimiser (DESIGN §2). The defaults are the built-in model's recipe, chosen
    by the study in experiments/recipes.md: Pair-DPO `sum` with DPOP as the image term and per-token
    NLL terms on the chosen samples raised generation above the base's (paired interval) while
    understanding did not fall (so did positive-only images without a caption branch,
    `--loss-type gen --gen-objective sft`, measured after the choice); per-step masks and homologous rows make arms
    comparable. Each of these is one flag away, and `--preset paper` is the paper's recipe."""

    loss_type: str = option("sum", "product (Eq. 6), sum (Eq. 12), und or gen (Table 5's one-branch DPO), joint (-log σ(Δ_und + Δ_gen))",
                            choices=("product", "sum", "und", "gen", "joint"))
    beta_und: float = option(0.2, "β of the understanding branch", minimum=1e-6)
    beta_gen: float = option(0.2, "β of the generation branch", minimum=1e-6)
    gen_objective: str = option("dpop", "the image branch's objective: dpop (DPO-Positive, arXiv 2402.13228: DPO plus a penalty when the chosen "
                                "image's likelihood falls below the reference's; the default, experiments/recipes.md); dpo (plain DPO, the paper's); apo_zero (TRL's loss_type apo_zero); "
                                "cal_dpo (arXiv 2412.14516, as its official code); sft (positive-only, RAFT: the chosen image's NLL alone, "
                                "no rejected image, no image reference). product and joint take dpo or dpop only",
                                choices=("dpo", "dpop", "apo_zero", "cal_dpo", "sft"))
    dpop_lambda: float = option(50.0, "λ of DPOP's penalty β·λ·max(0, log π_ref(x_w) − log π(x_w)) (the Smaug paper's value)", minimum=0.0)
    sft_min_accuracy: float = option(1.0, "gen_objective sft: train the image term only on examples whose chosen image's self-VQA accuracy "
                                     "is at least this (their captions train either way); counts in summary.json", minimum=0.0, maximum=1.0)
    sft_und: float = option(1.0, "weight of an NLL term on chosen captions (RPO, TRL's sft); 0 = plain DPO", minimum=0.0)
    sft_gen: float = option(1.0, "weight of an NLL term on chosen images (RPO, TRL's sft); 0 = plain DPO, which empties images "
                            "(experiments/gen_dpo.md); no effect with gen_objective sft", minimum=0.0)
    sft_norm: str = option("token", "the NLL terms per token (token, as TRL's sft, so its weight does not follow the caption length or "
                           "the random mask count) or summed over tokens (sum, the first version's)", choices=("token", "sum"))
    pair_rows: str = option("homologous", "which preference rows train: homologous (rows with both a caption and an image pair, the same "
                            "tuples whatever the loss trains, so arms compare fairly) or branch (rows with a pair in every branch the "
                            "loss trains: a one-branch loss then sees more rows); recorded in summary.json", choices=("homologous", "branch"))
    length_normalize: bool = option(False, "per-token (mean) log-probs instead of sums in the margins")
    mask_samples: int = option(1, "Monte-Carlo mask samples K for image log-probs", minimum=1)
    ratio_weighting: bool = option(False, "weight each mask sample's log-prob by 1 / mask ratio")
    mask_draws: str = option("step", "image masks drawn afresh each step (step, as the official code; the image reference is then "
                             "computed online with the same masks) or once per round (round: each example keeps one mask, its "
                             "reference cached)", choices=("step", "round"))
    cond_dropout: float = option(0.0, "share of image pairs scored under the empty prompt, so the unconditional branch that guidance subtracts moves too", minimum=0.0, maximum=1.0)
    reference: str = option("cached", "cached: reference log-probs precomputed once per round (caption ones always; image ones only with "
                            "--mask-draws round, else online); online: all computed each step, by a frozen copy or with the LoRA "
                            "adapter disabled", choices=("cached", "online"))
    lr: float = option(1e-4, "peak AdamW learning rate (the built-in model's recipe; the paper used 2e-5 for Show-o)", minimum=1e-12)
    weight_decay: float = option(0.01, "AdamW weight decay", minimum=0.0)
    warmup: int = option(10, "linear warm-up steps before the cosine decay", minimum=0)
    train_steps: int = option(150, "optimizer steps per round", minimum=1)
    batch_size: int = option(8, "global batch (split across processes)", minimum=1)
    max_grad_norm: float = option(1.0, "gradient clipping; 0 = off", minimum=0.0)
    lora_r: int = option(0, "LoRA rank; 0 trains every weight. With LoRA the online reference is the model with its adapter disabled", minimum=0)
    lora_alpha: float = option(16.0, "LoRA alpha (scale alpha / r)", minimum=0.0)
    lora_target_modules: str = option("", "comma-separated module names LoRA wraps; empty takes the backbone's defaults")
    lora_merge: bool = option(True, "write the trained model with the adapter merged (model/) besides the adapter (adapter/)")
    report_to: str = option("", "accelerate trackers besides metrics.jsonl (tensorboard, wandb, ...); empty = none")
    save_every: int = option(50, "steps between resumable accelerate save_state checkpoints", minimum=0)
    max_nonfinite: int = option(5, "stop after this many non-finite losses in a row", minimum=1)
    log_branch_grad_norms: bool = option(False, "log und/grad_norm and gen/grad_norm, each branch's own objective's gradient alone (two extra backward passes)")


@dataclass
class GRPOOptions:
    """Online GRPO on the image branch as a round's training step (`--recipe grpo`; hermesflow/grpo.py):
    UniGRPO (MMaDA, arXiv 2505.15809) and UniRL (arXiv 2505.23380) with the model's own self-VQA as
    the reward. The optimiser (lr, warmup, train_steps, weight_decay, max_grad_norm, save_every) and
    the sampler (steps, guidance, image_temperature) are the run's; the curated pairs are not used."""

    recipe: str = option("dpo", "a round's training step: dpo (Pair-DPO on the curated pairs) or grpo (online GRPO on the image "
                         "branch: fresh samples each step rewarded by the model's own answers to the record's questions; "
                         "the understanding branch does not train)", choices=("dpo", "grpo"))
    grpo_prompts: int = option(4, "GRPO: records (captions) per step, split across processes", minimum=1)
    grpo_group: int = option(8, "GRPO: images sampled per caption, the group whose rewards are normalised together", minimum=2)
    grpo_reward: str = option("hard", "GRPO: hard (the share of questions answered correctly) or graded (the mean probability of "
                              "the correct answers under the model's multiple-choice scores)", choices=("hard", "graded"))
    grpo_estimator: str = option("trajectory", "GRPO: the image log-prob in the ratio: trajectory (over the cells each MaskGIT step "
                                 "committed, at the recorded states; MaskGIT backbones) or random_mask (the backbone's own "
                                 "estimator: random cosine masks with --mask-samples, exact on autoregressive backbones)",
                                 choices=("trajectory", "random_mask"))
    grpo_logits: str = option("sampler", "GRPO trajectory estimator: sampler (the guided logits at the sampling temperature, "
                              "what the images were drawn from) or conditional (the conditional model alone, w 0, temperature 1)",
                              choices=("sampler", "conditional"))
    grpo_inner_steps: int = option(2, "GRPO: μ, optimiser updates on each sampled batch (after the first the ratio leaves 1 and "
                                   "the clip acts)", minimum=1)
    grpo_clip: float = option(0.2, "GRPO: ε of the clipped ratio clip(ρ, 1 − ε, 1 + ε), ρ over per-token mean log-probs", minimum=0.0)
    grpo_beta_kl: float = option(0.0, "GRPO: β of a k3 KL penalty to the round's starting model; 0 = none, as DAPO", minimum=0.0)
    grpo_eps: float = option(1e-4, "GRPO: eps in the advantage (r − mean) / (std + eps)", minimum=0.0)


@dataclass
class CurateConfig(CurationOptions, DataOptions):
    """`hermesflow curate`: build one round of homologous preference data with the model itself."""

    model: Path = option(None, "model folder", required=True)
    data: Path = option(None, "homologous data (data.jsonl or its folder) with qa", required=True)
    out: Path = option(None, "round folder for prefs.jsonl and manifest.json", required=True)
    previous: Path = option(None, "the previous round's folder, for the self-play update (Eq. 10)")
    round: int = option(1, "round number, as in a run's round-N folders: 1 pairs each record's best and worst samples, "
                        "later rounds update the --previous round's pairs (Eq. 10)", minimum=1)
    seed: int = option(0, "seed of sampling")
    overwrite: bool = option(False, "delete results in --out made with other settings and start again (without it such a folder is refused)")


@dataclass
class TrainConfig(TrainingOptions, DataOptions):
    """`hermesflow train`: Pair-DPO on one curated round."""

    model: Path = option(None, "policy's starting model folder (also the reference)", required=True)
    data: Path = option(None, "the homologous data the round was curated from", required=True)
    prefs: Path = option(None, "round folder holding prefs.jsonl", required=True)
    out: Path = option(None, "output folder for the trained model, metrics.jsonl and the training state", required=True)
    seed: int = option(0, "seed of batch order and mask seeds")
    dtype: str = option("fp32", "fp32, or bf16 mixed precision over fp32 weights", choices=("fp32", "bf16"))
    overwrite: bool = option(False, "delete results in --out made with other settings and start again (without it such a folder is refused)")


# The paper's hyperparameters for Show-o 1.3B (§5.1 and the official code): a preset's values stand
# in for the defaults, and a config file or a flag still overrides each of them.
RUN_PRESETS = {
    "default": {},
    "paper": dict(loss_type="sum", gen_objective="dpo", lr=2e-5, weight_decay=0.01, beta_und=0.2, beta_gen=0.2, sft_und=0.0, sft_gen=0.0,
                  batch_size=4, train_steps=3000, n_captions=10, n_images=16, guidance=5.0, eval_guidance=5.0, steps=50),
}


@dataclass
class RunConfig(CurationOptions, TrainingOptions, GRPOOptions, DataOptions, ApiOptions):
    """`hermesflow run` / `iterate`: evaluate the base model, then R self-play rounds of curate, train, evaluate."""

    PRESETS = RUN_PRESETS

    out: Path = option(None, "run folder", required=True)
    preset: str = option("default", "default: the built-in model's recipe; paper: the paper's Show-o recipe (AdamW lr 2e-5, "
                         "β 0.2, no NLL terms, batch 4, 3000 steps, 10 captions and 16 images, guidance 5, 50 steps)",
                         choices=tuple(RUN_PRESETS))
    model: Path = option(None, "base model folder (default: the shipped base checkpoint)")
    data: Path = option(None, "homologous train data (default: a held-out slice of the world's train split)")
    rounds: int = option(1, "self-play rounds", minimum=0)
    n_train: int = option(400, "world train records to curate from when --data is not given", minimum=1)
    eval_n: int = option(500, "eval split examples per evaluation", minimum=1)
    eval_data: Path = option(None, "held-out homologous data with qa to evaluate on instead of the world's eval split")
    eval_guidance: float = option(2.0, "guidance used when evaluating generation", minimum=0.0)
    judge: str = option("auto", "who answers the questions about generated images when evaluating: auto (the world oracle "
                        "when every record has a scene, else the model itself); vlm (a VLM behind --endpoint)", choices=("auto", "vlm"))
    seed: int = option(0, "seed of everything")
    overwrite: bool = option(False, "delete results in --out made with other settings and start again (without it such a folder is refused)")


@dataclass
class ReportConfig:
    """`hermesflow report RUN_DIR`: a static HTML page of a run's tables, plots and preference pairs."""

    run: Path = option(None, "the folder made by `hermesflow run`, `iterate` or `ablate`", positional=True, required=True)
    gallery: int = option(8, "preference pairs shown from the last round", minimum=0)


@dataclass
class AblateConfig(CurationOptions, TrainingOptions, GRPOOptions):
    """`hermesflow ablate`: recipes compared fairly with seeds and paired intervals; by default the paper's Table 5
    arms (one-branch DPO, Pair-DPO sum and product, rounds 2-3), or the arms of a YAML file (--arms)."""

    out: Path = option(None, "ablation folder", required=True)
    arms: Path = option(None, "YAML file of arms: name: {setting: value, ..., rounds: N} (settings of the training and curation "
                        "options; e.g. experiments/recipes.yaml); none: the paper's Table 5 arms")
    preset: str = option("quick", "quick: 3 seeds, 200 records, 500 eval scenes; full: 5 seeds, 400 records, 1000 scenes",
                         choices=("quick", "full"))
    model: Path = option(None, "base model folder (default: the shipped base checkpoint)")
    seeds: int = option(0, "seeds per arm; 0 takes the preset's", minimum=0)
    n_train: int = option(0, "world train records to curate; 0 takes the preset's", minimum=0)
    eval_n: int = option(0, "eval scenes per evaluation; 0 takes the preset's", minimum=0)
    eval_guidance: float = option(2.0, "guidance used when evaluating generation", minimum=0.0)
    seed: int = option(0, "seed of the data and of round-0 curation")
    overwrite: bool = option(False, "delete results in --out made with other settings and start again (without it such a folder is refused)")


@dataclass
class QuestionsConfig(DataOptions, ApiOptions):
    """`hermesflow questions`: TIFA-format questions for the captions that have none (scene graph or an LLM endpoint)."""

    data: Path = option(None, "homologous data (any format --data reads)", required=True)
    out: Path = option(None, "the TIFA-format question file to write (give it to other verbs as --questions)", required=True)
    source: str = option("llm", "scene: the world's scene graph (exact); llm: a language model behind --endpoint", choices=("scene", "llm"))
    redo: bool = option(False, "ask for every record, also those that already have questions")


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
    guidance: float = option(2.0, "classifier-free guidance w in (1 + w) cond - w uncond", minimum=0.0)
    temperature: float = option(1.0, "sampling temperature", minimum=0.0)
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


def _groups(cls: type, own: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """--help sections of a verb that runs every stage: `own` names its fields by section, curation
    and training take their option classes' fields (LoRA under model), the rest is data."""
    names = [f.name for f in fields(cls)]
    lora = tuple(n for n in names if n.startswith("lora_"))
    groups = {**own, "model": (*own.get("model", ()), "dtype", *lora),
              "curation": tuple(f.name for f in fields(CurationOptions) if f.name != "dtype"),
              "training": tuple(f.name for f in fields(TrainingOptions) if f.name not in lora)}
    placed = {n for group in groups.values() for n in group}
    groups["data"] = (*own.get("data", ()), *(n for n in names if n not in placed))
    return groups


RunConfig.GROUPS = _groups(RunConfig, {"run": ("out", "preset", "rounds", "seed", "overwrite"), "model": ("model",),
                                       "data": ("data", "n_train"), "evaluation": ("eval_n", "eval_data", "eval_guidance"),
                                       "grpo": tuple(f.name for f in fields(GRPOOptions))})
AblateConfig.GROUPS = _groups(AblateConfig, {"ablation": ("out", "arms", "preset", "seeds", "seed", "overwrite"), "model": ("model",),
                                             "data": ("n_train",), "evaluation": ("eval_n", "eval_guidance"),
                                             "grpo": tuple(f.name for f in fields(GRPOOptions))})
