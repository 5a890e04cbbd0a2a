"""Shared fixtures: the real assets (CIFAR-10 JPEGs, ResNet checkpoints, ImageNet sample)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rmt_deploy.errors import AssetsError
from rmt_deploy.paths import assets_dir

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def assets() -> Path:
    """The shared assets; CI sets RMT_DEPLOY_REQUIRE_ASSETS=1 so their absence fails, not skips."""
    try:
        return assets_dir()
    except AssetsError as exc:
        if os.environ.get("RMT_DEPLOY_REQUIRE_ASSETS") == "1":
            raise
        pytest.skip(f"shared assets not available: {exc}")


@pytest.fixture(scope="session")
def cifar_test(assets: Path) -> Path:
    return assets / "cifar10" / "test"


@pytest.fixture(scope="session")
def imagenet_sample(assets: Path) -> Path:
    return assets / "imagenet-val-1300"


@pytest.fixture(scope="session")
def resnet56(assets: Path):
    from rmt_deploy.models import load_model

    return load_model("cifar_resnet56", assets=assets)
