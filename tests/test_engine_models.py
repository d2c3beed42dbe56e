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
