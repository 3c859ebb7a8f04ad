"""Sampling and scoring: the samplers, generation of image sets, FID/sFID/IS/precision/recall, in-training FID."""
