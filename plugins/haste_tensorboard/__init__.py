"""The TensorBoard monitor: writes the documented tags from the lifecycle hooks (rank 0 only)."""
