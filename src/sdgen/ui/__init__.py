"""The web page of ``sdgen serve``: static files (HTML, CSS, plain JS modules), no build step.

The page talks only to the HTTP API (``/v1``); the server serves these files at ``/`` and
``/static/``. Nothing here imports the server, FastAPI or torch.
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"  # index.html, style.css, *.js
INDEX_HTML = STATIC_DIR / "index.html"
