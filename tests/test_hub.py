"""Hub ids through the Hugging Face cache: HF_HOME and HF_HUB_OFFLINE honoured, failures fast."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ID = "sdgen-tests/tiny-sd"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _sdgen(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    full_env.pop("HF_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "sdgen.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


def _fake_cache(hf_home: Path, model: Path) -> Path:
    """The layout huggingface_hub writes: refs/main names a snapshot folder of the files."""
    repo = hf_home / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    shutil.copytree(model, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return repo


def test_a_cached_hub_model_loads_offline(tmp_path, tiny_sd1):
    _fake_cache(tmp_path / "hf", tiny_sd1)
    done = _sdgen(
        [
            "generate",
            "a cat",
            "--model",
            REPO_ID,
            "--steps",
            "2",
            "--seed",
            "3",
            "--out",
            str(tmp_path / "out"),
        ],
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_OFFLINE="1",
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).name == "0000000003.png"


def test_a_missing_hub_model_offline_fails_fast_and_says_what_to_do(tmp_path):
    started = time.monotonic()
    done = _sdgen(
        ["generate", "a cat", "--model", "someone/not-here"],
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_OFFLINE="1",
    )
    assert time.monotonic() - started < 60
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "'someone/not-here'" in done.stderr and "HF_HUB_OFFLINE" in done.stderr
    assert "hf download someone/not-here" in done.stderr


def test_an_unreachable_hub_fails_fast(tmp_path):
    """Online mode with the hub out of reach (a closed local port) is a clear error, no hang."""
    started = time.monotonic()
    done = _sdgen(
        ["generate", "a cat", "--model", "someone/not-here"],
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_OFFLINE="0",
        HF_ENDPOINT="http://127.0.0.1:9",
    )
    assert time.monotonic() - started < 60
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "'someone/not-here'" in done.stderr
    assert done.stderr.count("\n") == 1


def test_serve_offline_refuses_a_hub_model_not_in_the_cache_before_listening(tmp_path):
    """Offline, only the cache can have it: found at start (it started and failed every job)."""
    done = _sdgen(
        ["serve", "--model", "someone/not-here", "--data-dir", str(tmp_path / "data")],
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_OFFLINE="1",
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "'someone/not-here'" in done.stderr and "HF_HUB_OFFLINE" in done.stderr
