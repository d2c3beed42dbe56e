"""Pictures in and out: latents <-> images, PNG metadata."""
