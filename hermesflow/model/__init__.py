"""The built-in model's parts: its transformer and its tokenizers (the backbone is
`hermesflow.backbones.builtin.UnifiedModel`)."""

from hermesflow.model.tokenizers import ImageTokenizer, TextTokenizer
from hermesflow.model.transformer import Transformer, TransformerConfig

__all__ = ["ImageTokenizer", "TextTokenizer", "Transformer", "TransformerConfig"]
