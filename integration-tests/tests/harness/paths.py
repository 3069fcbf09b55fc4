"""Where things are: the checkout, the binaries under test, libduckdb, `shared/`."""

from __future__ import annotations

import os
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[3]


def cache_dir() -> Path:
    """`${XDG_CACHE_HOME:-~/.cache}/telemetry-lake`, where the fetch and build scripts cache."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "telemetry-lake"


def bin_dir() -> Path:
    return Path(os.environ.get("LAKE_BIN_DIR", REPO_DIR / "target" / "debug"))


def appender_binary() -> Path:
    return bin_dir() / "appender"


def duckdb_lib_dir() -> str | None:
    """Where libduckdb.so is: DUCKDB_LIB_DIR, else the cache the build scripts fill, if there."""
    if os.environ.get("DUCKDB_LIB_DIR"):
        return os.environ["DUCKDB_LIB_DIR"]
    cache = cache_dir() / "duckdb-1.5.5"
    return str(cache) if (cache / "libduckdb.so").exists() else None


def shared_dir() -> Path:
    """The `shared/` directory that sits beside the checkout (CI lays it out the same way)."""
    return Path(os.environ.get("LAKE_SHARED_DIR", REPO_DIR.parent / "shared"))


def loghub_dir() -> Path:
    return shared_dir() / "data" / "loghub"
