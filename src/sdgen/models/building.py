"""One network built at a time in this process.

diffusers and transformers build a network's modules on torch's meta device while its
``from_pretrained`` runs, by patching torch process-wide (accelerate's ``init_empty_weights``),
so a network built in another thread meanwhile gets meta tensors and fails ("Cannot copy out
of meta tensor"); three threads loading models at once failed 10 rounds out of 10 here. A
server loads models from several threads (one worker per device, requests naming another
model, rankers and safety checkers), so every load in sdgen builds its networks under this
lock. Downloads and moving the built networks to their device stay outside it.
"""

from __future__ import annotations

import threading

BUILD_LOCK = threading.RLock()  # process-wide, as the patching it guards against is
