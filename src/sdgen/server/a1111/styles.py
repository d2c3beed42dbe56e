"""A1111's prompt styles: named prompt and negative prompt templates from a ``styles.csv``
(``sdgen serve --styles FILE``), applied to an A1111 call's prompts when its ``styles`` name them.

As A1111's ``modules/styles.py``: a style's prompt holding ``{prompt}`` takes the prompt in its
place; one without is joined after the prompt with ", ". Styles apply in the order named, and
the pictures' metadata records the prompts with the styles applied, as A1111's does.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from sdgen.errors import InvalidRequest, SdgenError

MAX_STYLES_BYTES = 1 << 20  # a styles file is a few kilobytes; a mistaken path is refused


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str
    negative_prompt: str


def read_styles(path: Path) -> dict[str, PromptStyle]:
    """The styles of an A1111 ``styles.csv`` (columns name, prompt, negative_prompt), by name;
    a later row of a name replaces an earlier one, as in A1111. SdgenError names the file."""
    try:
        if path.stat().st_size > MAX_STYLES_BYTES:
            raise SdgenError(f"styles: {path} is over {MAX_STYLES_BYTES} bytes: not a styles file")
        with path.open(newline="", encoding="utf-8-sig") as file:  # a BOM is read past
            reader = csv.DictReader(file)
            rows = list(reader)
            columns = set(reader.fieldnames or ())
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SdgenError(f"styles: {path} cannot be read as a styles CSV ({err})") from err
    if "name" not in columns:
        raise SdgenError(
            f"styles: {path} has no 'name' column (A1111's: name,prompt,negative_prompt)"
        )
    styles = {}
    for row in rows:
        name = (row.get("name") or "").strip()
        if name:
            styles[name] = PromptStyle(
                name, row.get("prompt") or "", row.get("negative_prompt") or ""
            )
    return styles


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """A1111's ``merge_prompts``: the prompt in the style's ``{prompt}``, else both joined."""
    if "{prompt}" in style_prompt:
        return style_prompt.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles(
    prompt: str, negative_prompt: str, names: list[str], styles: dict[str, PromptStyle]
) -> tuple[str, str]:
    """(prompt, negative prompt) with the styles ``names`` applied in order; an unknown name is
    refused by ``styles`` (A1111 skips it, and the picture would miss what it asked for)."""
    for name in names:
        style = styles.get(name)
        if style is None:
            known = ", ".join(sorted(styles)) or "none: sdgen serve --styles FILE gives some"
            raise InvalidRequest("styles", name, f"one of this server's styles ({known})")
        prompt = merge_prompts(style.prompt, prompt)
        negative_prompt = merge_prompts(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt
