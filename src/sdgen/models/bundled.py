"""Files sdgen ships so that models load offline."""

from __future__ import annotations

from pathlib import Path

# CLIP's BPE vocabulary in transformers' CLIPTokenizer layout (see assets/clip_tokenizer/README.md).
CLIP_TOKENIZER_DIR = Path(__file__).parent / "assets" / "clip_tokenizer"
