"""Shared fixtures: tiny random SD 1.x (also inpainting) and SD 2.x models, built once per test
session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The suite never touches the network: hub look-ups stay in the (test's own) cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd1", family="sd1")


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd2", family="sd2")


@pytest.fixture(scope="session")
def inpaint_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD 1.x whose UNet is an inpainting one (9 input channels)."""
    from tiny_models import build_tiny_model

    folder = tmp_path_factory.mktemp("models") / "tiny-inpainting"
    return build_tiny_model(folder, family="sd1", seed=1, unet_in_channels=9)


@pytest.fixture(scope="session")
def sd1_model(tiny_sd1: Path):
    from sdgen.models.loader import load_model

    return load_model(tiny_sd1, device="cpu")


@pytest.fixture(scope="session")
def sd2_model(tiny_sd2: Path):
    from sdgen.models.loader import load_model

    return load_model(tiny_sd2, device="cpu")
