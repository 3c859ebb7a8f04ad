"""Built-in teachers: the embedded default ``digits_vit`` (one module per teacher family)."""
