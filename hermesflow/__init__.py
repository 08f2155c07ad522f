"""HermesFlow: post-training unified multimodal models with homologous preference data, Pair-DPO
and self-play (arXiv 2502.12148)."""

__version__ = "0.1.0"
