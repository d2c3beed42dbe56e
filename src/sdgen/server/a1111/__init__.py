"""AUTOMATIC1111-compatible API (``/sdapi/v1``): protocol, serving, routes."""
