"""Model-based quality: KenLM perplexity (CCNet style) and a linear classifier (DCLM style)."""
