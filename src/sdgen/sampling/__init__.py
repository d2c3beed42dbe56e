"""Samplers (name -> diffusers scheduler), initial noise and the one denoising loop."""
