"""Built-in Weights & Biases monitor (the optional extra ``haste-diffusion[wandb]``)."""
