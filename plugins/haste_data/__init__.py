"""Built-in data sets: the embedded default ``digits`` (scikit-learn's 8×8 handwritten digits)."""
