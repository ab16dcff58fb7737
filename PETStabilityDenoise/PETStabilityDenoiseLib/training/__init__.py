"""Training the diffusion model on simulated BrainWeb pairs: the data set and the training loop."""
