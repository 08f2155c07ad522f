"""`hermesflow plan`'s estimate against the memory a training step takes, measured on this CPU.

A built-in model of about 100 M parameters (d_model 768, 14 blocks) is planned (fp32, full
fine-tuning, one process, the online reference), then trained for one step in a fresh process whose
resident memory (VmRSS, and VmHWM for the peak) is read after each part is made: the weights, the
reference's frozen copy, the gradients (a backward of one short sequence, whose few activations
are freed), AdamW's first step (its two moments) and the forward of the batch (its activations),
in that order, so that no part is measured in memory another part freed. Each part's estimate and measurement are printed side by side with their ratio.
The forward is the one the plan counts: four full sequences per example (two captions, two images),
logits over the whole vocabulary.

Run: `python benchmarks/bench_plan.py` (about a minute and 4 GB of memory).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = {"model_type": "hermesflow-unified", "d_model": 768, "n_layers": 14, "n_heads": 12}

STEP = r"""
import copy, json, sys
import torch
from hermesflow.testbed.model import UnifiedConfig, UnifiedModel

def rss(field="VmRSS"):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field + ":"))

torch.manual_seed(0)
cfg, n = json.loads(sys.argv[1]), int(sys.argv[2])
out = {"start": rss()}
model = UnifiedModel(UnifiedConfig(**{k: v for k, v in cfg.items() if k != "model_type"}))
out["weights"] = rss()
reference = copy.deepcopy(model).requires_grad_(False)
out["reference"] = rss()
one, _ = model.net(torch.zeros(1, model.seq_len, dtype=torch.long), None, extend_cache=False)
one.float().log_softmax(-1).sum().backward()  # one short sequence: the gradients, with few activations
del one
out["gradients"] = rss()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)  # kept: its state lives as long as it does
opt.step()
out["optimizer"] = rss()
tokens = torch.zeros(4 * n, model.seq_len, dtype=torch.long)
logits, _ = model.net(tokens, None, extend_cache=False)
loss = logits.float().log_softmax(-1).sum()
out["forward"] = rss()
loss.backward()
out["peak"] = rss("VmHWM")
print(json.dumps(out))
"""


def main() -> None:
    from hermesflow.plan import GB, plan

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(json.dumps(CONFIG))
        estimate = plan(folder, "fp32", batch_size=args.batch_size)
    run = subprocess.run([sys.executable, "-c", STEP, json.dumps(CONFIG), str(args.batch_size)], capture_output=True, text=True,
                         check=True, env={"OMP_NUM_THREADS": "2", "PATH": ""})
    m = json.loads(run.stdout)
    measured = {"weights": m["weights"] - m["start"], "reference": m["reference"] - m["weights"],
                "gradients": m["gradients"] - m["reference"], "AdamW state": m["optimizer"] - m["gradients"],
                "activations": m["forward"] - m["optimizer"]}
    planned = {"weights": estimate.weights, "reference": estimate.reference, "activations": estimate.activations,
               "gradients": estimate.gradients, "AdamW state": estimate.optimizer}
    print(f"built-in model, {estimate.parameters / 1e6:.0f} M parameters, fp32, full fine-tuning, batch {args.batch_size}, one process")
    print(f"{'part':<14}{'plan':>10}{'measured':>10}{'plan / measured':>17}")
    for part in planned:
        ratio = planned[part] / measured[part] if measured[part] > 0 else float("nan")
        print(f"{part:<14}{planned[part] / GB:>9.3f}G{measured[part] / GB:>9.3f}G{ratio:>17.2f}")
    print(f"peak resident memory {m['peak'] / GB:.3f} GB; plan's total {estimate.total / GB:.3f} GB")


if __name__ == "__main__":
    main()
