"""Prompts -> text embeddings for the UNet's cross-attention."""
