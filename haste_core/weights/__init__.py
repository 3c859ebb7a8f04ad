"""Weights on disk: hub and file resolution, caches, checkpoints, import of published checkpoints, export."""
