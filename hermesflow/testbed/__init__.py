"""The test bed: the built-in unified model (`model.UnifiedModel`, a Show-o-style transformer over
the shapes world's words and image cells), its tokenizers and its pretraining. It sits beside the
method, as the shapes world does: the method reaches it only through the backbone registry
(`model_type` "hermesflow-unified") and the recipes."""
