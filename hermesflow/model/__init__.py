"""The built-in unified model (Show-o-style) and its tokenizers."""

from hermesflow.model.tokenizers import ImageTokenizer, TextTokenizer
from hermesflow.model.unified import UnifiedConfig, UnifiedModel

__all__ = ["ImageTokenizer", "TextTokenizer", "UnifiedConfig", "UnifiedModel"]
