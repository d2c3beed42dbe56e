"""CLIP scoring of pictures against a prompt."""
