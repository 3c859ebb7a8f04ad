"""The training loop: the trainer, its Phase-I stage, the train step, the phase plan, the gradient probe, EMA,
the metric window, the data stream and the run folder."""
