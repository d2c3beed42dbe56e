"""The engine's model pool: configured names only, one load per (name, device), failures."""

from __future__ import annotations

import threading
import time

import pytest

from sdgen.engine.models import ModelPool
from sdgen.errors import InvalidRequest, ModelNotFound


def test_callers_waiting_on_a_failing_load_share_its_error_and_later_ones_retry():
    """A burst of requests for a model that cannot load waits for one attempt, not one each."""
    calls, broken = [], [True]

    def load(name: str, device: str):
        calls.append((name, device))
        time.sleep(0.3)  # a slow failure: the hub out of reach, say
        if broken[0]:
            raise ModelNotFound(f"model: {name!r} could not be fetched")
        return f"{name} on {device}"

    pool = ModelPool(["owner/model"], load)
    errors = []

    def request():
        try:
            pool.get("owner/model", "cpu")
        except ModelNotFound as err:
            errors.append(str(err))

    threads = [threading.Thread(target=request) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(calls) == 1 and len(errors) == 5
    assert all("could not be fetched" in error for error in errors)
    with pytest.raises(ModelNotFound):  # a later call tries again
        pool.get("owner/model", "cpu")
    assert len(calls) == 2
    broken[0] = False  # fixed: the next call loads it, and it stays loaded
    assert pool.get("owner/model", "cpu") == "owner/model on cpu"
    assert pool.get("owner/model", "cpu") == "owner/model on cpu" and len(calls) == 3


def test_only_configured_names_are_loaded():
    pool = ModelPool(["a", "b", "a"], lambda name, device: name)
    assert pool.names == ("a", "b") and pool.default == "a"
    with pytest.raises(InvalidRequest) as raised:
        pool.get("../c", "cpu")
    assert raised.value.field == "model" and "a, b" in raised.value.allowed


def test_models_loaded_from_several_threads_at_once_all_load(tiny_sd1, tiny_sd2):
    """A server loads from several threads (a worker per device, requests naming another model).
    diffusers and transformers build networks on the meta device by patching torch
    process-wide; without sdgen's build lock, three loads at once failed every round here
    ("Cannot copy out of meta tensor")."""
    from sdgen.models.bundled import MINIATURE_MODEL

    names = [str(tiny_sd1), str(tiny_sd2), MINIATURE_MODEL]
    for _ in range(3):
        pool, errors = ModelPool(names), []

        def load(name, pool=pool, errors=errors):
            try:
                pool.get(name, "cpu")
            except Exception as err:  # noqa: BLE001 - collected for the assertion
                errors.append(f"{name}: {err!r}")

        threads = [threading.Thread(target=load, args=(name,)) for name in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        assert len(pool.loaded()) == 3
