"""Runs requests on loaded models: many devices at once, and (for the server) the job queue."""
