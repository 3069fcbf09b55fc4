"""The services' configuration (a TOML file or `TELEMETRY_LAKE_*` variables) and child environments."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from harness.paths import duckdb_lib_dir

ENV_PREFIX = "TELEMETRY_LAKE_"

# A nested mapping written as TOML: {"flush": {"interval": "2s"}} -> [flush] interval = "2s";
# a mapping inside a section is a sub-table: {"iceberg": {"properties": {...}}} -> [iceberg.properties].
ConfigOverrides = Mapping[str, Mapping[str, Any]]

# Thresholds that never fire on their own, so a test decides when a flush happens.
NEVER_FLUSH: dict[str, dict[str, Any]] = {
    "flush": {"interval": "1h", "max_records": 100_000_000, "max_bytes": "1GiB"},
}

BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_key(key: str) -> str:
    return key if BARE_KEY.match(key) else json.dumps(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, os.PathLike)):
        return json.dumps(str(value))
    raise TypeError(f"unsupported config value {value!r}")


def to_toml(config: Mapping[str, Any], prefix: str = "") -> str:
    """Enough TOML for the services' config: tables (nested ones too, e.g. `[kafka.producer]`)
    of strings, numbers and booleans."""
    scalars = {k: v for k, v in config.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in config.items() if isinstance(v, Mapping)}
    lines = [f"[{prefix}]"] if prefix and (scalars or not tables) else []
    lines += [f"{toml_key(key)} = {toml_value(value)}" for key, value in scalars.items()]
    out = "\n".join(lines) + ("\n\n" if lines else "")
    for key, table in tables.items():
        out += to_toml(table, f"{prefix}.{toml_key(key)}" if prefix else toml_key(key))
    return out


def config_env(config: ConfigOverrides) -> dict[str, str]:
    """The same settings as `TELEMETRY_LAKE_<SECTION>__<KEY>` environment variables."""
    return {
        f"{ENV_PREFIX}{section.upper()}__{key.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
        for section, keys in config.items()
        for key, v in keys.items()
    }


def merge_config(*layers: ConfigOverrides | None) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, keys in (layer or {}).items():
            merged.setdefault(section, {}).update(keys)
    return merged


def service_env() -> dict[str, str]:
    """The environment for `appender` and `ingester`: the runner's, without its `TELEMETRY_LAKE_*`
    variables (each is a config key to the binary, and an unknown key is an error), with
    libduckdb on `LD_LIBRARY_PATH` and backtraces for panics only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    duckdb_lib = duckdb_lib_dir()
    if duckdb_lib:
        paths = [duckdb_lib, *filter(None, env.get("LD_LIBRARY_PATH", "").split(":"))]
        env["LD_LIBRARY_PATH"] = ":".join(paths)
    # Backtraces for panics, not for every library error value (opendal captures one each).
    env.setdefault("RUST_BACKTRACE", "1")
    env.setdefault("RUST_LIB_BACKTRACE", "0")
    return env


def no_proxy_env() -> dict[str, str]:
    """The runner's environment without proxy settings (everything the tests run is local)."""
    return {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
