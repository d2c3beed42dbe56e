"""Pictures in and out of JSON: base64 (plain or a ``data:`` URL) <-> InputPicture / PNG bytes."""

from __future__ import annotations

import base64
import binascii
import re

from sdgen.errors import InvalidRequest
from sdgen.media.images import read_picture
from sdgen.params import InputPicture

_DATA_URL = re.compile(r"data:[\w/+.-]*;base64,", re.ASCII)
_BASE64 = "a base64-encoded PNG, JPEG or WebP picture (or a data: URL)"


def decode_base64(text: str, field: str) -> bytes:
    """The bytes of ``text`` (base64, optionally a data: URL); InvalidRequest if malformed."""
    if not isinstance(text, str):
        raise InvalidRequest(field, type(text).__name__, _BASE64)
    match = _DATA_URL.match(text)
    payload = text[match.end() :] if match else text
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InvalidRequest(field, f"{text[:16]}...", f"{_BASE64} ({err})") from err


def decode_picture(text: str, field: str, *, mode: str, max_pixels: int) -> InputPicture:
    """An input picture from base64; not-pictures and decompression bombs are refused."""
    return read_picture(decode_base64(text, field), field, mode=mode, max_pixels=max_pixels)


def encode_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
