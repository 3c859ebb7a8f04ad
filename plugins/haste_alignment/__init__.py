"""Built-in alignment losses: ``repa`` (projected feature cosine) and ``attention`` (attention distillation)."""
