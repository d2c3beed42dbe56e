"""Model loading: diffusers folders, Hugging Face hub ids and single-file checkpoints."""
