"""Data preparation and its on-disk format, and the models it uses (the SD-VAE, the caption text encoder)."""
