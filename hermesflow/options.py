"""The options of each component, one dataclass each, every field documented.

A component receives its own options object and nothing more: `curate` a `CurationOptions`, `train`
a `TrainingOptions`, `read_data` a `DataOptions`, the API client an `ApiOptions`. The verbs' configs
(`hermesflow.settings`) nest them as groups. They hold no logic and import nothing heavy, so the
command line can list them quickly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hermesflow.config import option


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
    max_pixels: int = option(89_478_485, "refuse images of more pixels than this (PIL's own decompression-bomb limit); 0 lifts it",
                             minimum=0, changes_results=False)


@dataclass
class ApiOptions:
    """An OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama, a hosted API); the key is read
    from an environment variable and never written anywhere."""

    endpoint: str = option("", "base URL of the endpoint, e.g. http://127.0.0.1:8000/v1 (POST {endpoint}/chat/completions)", changes_results=False)
    api_model: str = option("", "the model name the endpoint serves")
    api_key_env: str = option("OPENAI_API_KEY", "environment variable holding the API key (unset: no key sent)", changes_results=False)
    timeout: float = option(60.0, "seconds to wait for one reply before trying again", minimum=0.001, changes_results=False)
    retries: int = option(4, "attempts after the first one (timeouts, 429, 5xx, refused connections, unusable replies)", minimum=0, changes_results=False)
    backoff: float = option(1.0, "seconds before the first retry, doubling after each (a 429's Retry-After wins)", minimum=0.0, changes_results=False)
    json_schema: bool = option(True, "ask for replies constrained by a JSON schema (response_format); turn off for servers without it", changes_results=False)
    workers: int = option(4, "requests in flight at once (answers keep their order; the first failure stops the run)", minimum=1, changes_results=False)
    api_cache: Path = option(None, "JSON Lines cache of accepted replies (default: beside the output); a rerun asks nothing twice", changes_results=False)


DRAW_HELP = ("which draw of the world's eval split: test (report results on it) or selection (compare settings and choose "
             "on it); the two share no scene and no sampling seed")
CHOICE_SCORE_HELP = ("how the model scores a multiple-choice option, in self-VQA and evaluation alike: the sum of its "
                     "tokens' log-probs (the paper's) or their mean per token (under a BPE tokenizer the sum favours "
                     "options of fewer tokens)")
GUIDANCE_HELP = ("classifier-free guidance w, (1 + w)·cond − w·uncond on the logits; default: the backbone's own "
                 "(built-in 2; Janus 4, which is Janus's scale 5; Show-o 5)")
LONG_TEXT_HELP = ("a generation prompt longer than the model's text slot (Show-o: max_seq_length - 2 tokens): truncate it there, "
                  "as Show-o's own pipeline does (counted), or refuse the data. Results never depend on it: refuse finishes only "
                  "when nothing is cut")


@dataclass
class CurationOptions:
    """How the model samples and judges its own candidates (paper §3.1)."""

    n_captions: int = option(8, "captions sampled per image (official code: 10)", minimum=1)
    caption_temperature: float = option(1.0, "sampling temperature for captions", minimum=0.0)
    caption_top_k: int = option(0, "top-k for caption sampling; 0 = off", minimum=0)
    n_images: int = option(16, "images generated per caption (official code: 16)", minimum=1)
    steps: int = option(10, "MaskGIT decoding steps", minimum=1)
    guidance: float | None = option(None, GUIDANCE_HELP, minimum=0.0)
    image_temperature: float = option(1.0, "sampling temperature for generation", minimum=0.0)
    choice_score: str = option("sum", CHOICE_SCORE_HELP, choices=("sum", "mean"))
    min_chosen_accuracy: float = option(0.6, "a generated winner is kept only if its self-VQA accuracy is above this", minimum=0.0, maximum=1.0)
    image_score: str = option("hard", "how the model ranks its images: hard (self-VQA accuracy, ties at the top are common) or graded "
                              "(mean probability of the correct answers under its own multiple-choice scores); the threshold stays on the accuracy",
                              choices=("hard", "graded"))
    pair_source: str = option("self", "self: the model ranks its images; oracle: the world's exact oracle ranks them, a control that is "
                              "NOT self-curated (records need world scenes)", choices=("self", "oracle"))
    rejected_from: str = option("samples", "samples: the worst sample is rejected; perturbed: an image drawn for the caption with one "
                                "attribute swapped (colour, shape, count or relation; world-phrased captions only)",
                                choices=("samples", "perturbed"))
    judge_model: str = option("policy", "whose answers rank the images in rounds after the first: policy (the model being trained, "
                              "the paper's) or base (the run's starting model, frozen, so the judge does not drift with the "
                              "policy; loaded beside it)", choices=("policy", "base"))
    pair_update: str = option("eq10", "pairs in the rounds after the first: eq10 (the paper's Eq. 10: the round's best sample against "
                              "the previous winner if it beats it, else against the previous loser) or redraw (the round's best "
                              "against its worst, as in the first round; the previous pair is not used)", choices=("eq10", "redraw"))
    caption_score: str = option("similarity", "how sampled captions are ranked: similarity (to the record's caption, by the sentence "
                                "encoder; the paper's) or drawn (the self-VQA accuracy, on the record's questions, of one image "
                                "the policy draws from each caption: captions that say the same thing tie and pair with nothing)",
                                choices=("similarity", "drawn"))
    und_pairs: str = option("captions", "the understanding branch's pairs: captions (sampled captions of the true image, the paper's) "
                            "or answers (the record's right answer to the question about the true image the model is least sure "
                            "of, over its strongest wrong choice; trains log π(answer | image, question); every round re-derives "
                            "them from the policy)", choices=("captions", "answers"))
    curate_batch_size: int = option(16, "records per curation batch", minimum=1)
    encoder: Path = option(None, "local sentence encoder folder for caption similarity (default: shipped MiniLM-L6)")
    pooling: str = option("mean", "sentence encoder pooling", choices=("mean", "cls"))


@dataclass
class TrainingOptions:
    """Pair-DPO and its optimiser (DESIGN §2). The defaults are the built-in model's recipe, kept by
    the written rule of experiments/recipes.md on the selection draw: Pair-DPO `sum` with DPOP as the
    image term and per-token NLL terms on the chosen samples raises generation on unseen prompts
    (paired interval over items and seeds); no eligible arm beat it, though its understanding
    interval reaches below the rule's floor (the arms without a caption branch, `--loss-type gen`,
    keep understanding). Per-step masks and homologous rows make arms comparable. Each of these is
    one flag away, and `--preset paper` is the paper's recipe."""

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
    reference_model: str = option("round", "whose log-probs the DPO terms are measured against: round (the round's starting model, a "
                                  "fresh reference each round, the paper's) or base (the run's starting model in every round, so "
                                  "later rounds stay anchored to it; loaded beside the policy; not with LoRA or GRPO)",
                                  choices=("round", "base"))
    replay: int = option(0, "train each round also on the pairs of up to this many earlier rounds of the run, each with the "
                         "round's reference (0: the round's own pairs only, the paper's); not with GRPO or `hermesflow train`",
                         minimum=0)
    lr: float = option(1e-4, "peak AdamW learning rate (the built-in model's recipe; the paper used 2e-5 for Show-o)", minimum=1e-12)
    weight_decay: float = option(0.01, "AdamW weight decay", minimum=0.0)
    warmup: int = option(10, "linear warm-up steps before the cosine decay", minimum=0)
    train_steps: int = option(150, "optimizer steps per round", minimum=1)
    batch_size: int = option(8, "global batch (split across processes)", minimum=1)
    max_grad_norm: float = option(1.0, "gradient clipping; 0 = off", minimum=0.0)
    sharding: str = option("ddp", "how several processes share training: ddp (each holds whole weights) or fsdp (PyTorch's FSDP2: "
                           "weights, gradients and AdamW state sharded over the processes, each transformer block gathered "
                           "for its own forward; hermesflow/sharding.py)", choices=("ddp", "fsdp"), changes_results=False)
    lora_r: int = option(0, "LoRA rank; 0 trains every weight. With LoRA the online reference is the model with its adapter disabled", minimum=0)
    lora_alpha: float = option(16.0, "LoRA alpha (scale alpha / r)", minimum=0.0)
    lora_target_modules: str = option("", "comma-separated module names LoRA wraps; empty takes the backbone's defaults")
    lora_merge: bool = option(True, "write the trained model with the adapter merged (model/) besides the adapter (adapter/)")
    report_to: str = option("", "accelerate trackers besides metrics.jsonl (tensorboard, wandb, ...); empty = none", changes_results=False)
    save_every: int = option(50, "steps between resumable accelerate save_state checkpoints", minimum=0, changes_results=False)
    max_nonfinite: int = option(5, "stop after this many non-finite losses in a row", minimum=1, changes_results=False)
    log_branch_grad_norms: bool = option(False, "log und/grad_norm and gen/grad_norm, each branch's own objective's gradient alone (two extra backward passes)", changes_results=False)


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
class EvalOptions:
    """How a run evaluates each model: on which items, with which guidance and judge. Sampling steps,
    temperature and the caption encoder are the curation's, so a model is judged as it sampled."""

    eval_n: int = option(500, "eval split examples per evaluation", minimum=1)
    eval_data: Path = option(None, "held-out homologous data with qa to evaluate on instead of the world's eval split")
    eval_draw: str = option("test", DRAW_HELP, choices=("selection", "test"))
    eval_guidance: float | None = option(None, "guidance w when evaluating generation; default: the backbone's own, as --guidance", minimum=0.0)
    judge: str = option("auto", "who answers the questions about generated images when evaluating: auto (the world oracle "
                        "when every record has a scene, else the model itself); vlm (a VLM behind --endpoint)", choices=("auto", "vlm"))
