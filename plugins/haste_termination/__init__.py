"""Built-in termination policies: ``never`` (REPA) and ``fixed_step`` (HASTE)."""
