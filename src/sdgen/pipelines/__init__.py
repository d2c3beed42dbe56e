"""Pipelines: short functions that compose conditioning, sampling and decoding."""
