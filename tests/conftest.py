"""Shared fixtures: where the real data in ../shared lives (or a skip when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    return Path(os.environ.get("STREAMREC_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture
def shared_dataset():
    """Return a function giving ../shared/datasets/<name>, skipping the test when absent."""

    def get(name: str) -> Path:
        path = shared_root() / "datasets" / name
        if not path.is_dir():
            pytest.skip(f"real data {path} not found: put ../shared beside the repo or set STREAMREC_SHARED")
        return path

    return get
