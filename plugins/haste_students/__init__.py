"""Built-in students: SiT at every published size (one module per model family)."""
