"""Files sdgen ships so that models load offline."""

from __future__ import annotations

from pathlib import Path

# CLIP's BPE vocabulary in transformers' CLIPTokenizer layout (see assets/clip_tokenizer/README.md).
CLIP_TOKENIZER_DIR = Path(__file__).parent / "assets" / "clip_tokenizer"

# sdgen's own miniature Stable Diffusion (see sdgen.miniature), the default model: it works
# offline on a fresh install. Made by `python -m sdgen.miniature.train`; README says how.
MINIATURE_MODEL = "sdgen-miniature"
BUNDLED_MODELS = {MINIATURE_MODEL: Path(__file__).parent / "assets" / "miniature"}
