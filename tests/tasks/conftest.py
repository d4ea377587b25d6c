"""Fixtures for the task tests: the real original files in ../shared/data (skipped when absent)."""

import os
from pathlib import Path

import pytest


def shared_data_dir() -> Path | None:
    env = os.environ.get("MPTUNE_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    return path.resolve() if (path / "MANIFEST.tsv").is_file() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real data folder ../shared/data (or $MPTUNE_SHARED_DATA) not present")
    return path


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch):
    """Tests choose their data dir explicitly."""
    monkeypatch.delenv("MPTUNE_DATA_DIR", raising=False)
