"""Tokenizing from several threads.

transformers' fast tokenizers set their padding and truncation on the one Rust tokenizer they
wrap, at every call, and release the GIL while encoding: two threads calling the same tokenizer
at once (a server's worker encoding a prompt while a request thread counts another prompt's
tokens) can get each other's settings, e.g. an unpadded batch where padding was asked for.
Every tokenizer call in sdgen goes through ``tokenize``, one call at a time; a call takes
microseconds.
"""

from __future__ import annotations

import threading

_LOCK = threading.Lock()


def tokenize(tokenizer, *args, **kwargs):
    """``tokenizer(*args, **kwargs)``, never at the same time as another sdgen tokenizer call."""
    with _LOCK:
        return tokenizer(*args, **kwargs)
