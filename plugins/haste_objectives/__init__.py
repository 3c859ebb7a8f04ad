"""Built-in training objectives: ``flow`` (linear or cosine interpolant, velocity target)."""
