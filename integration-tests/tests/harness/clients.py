"""Clients for local services: HTTP and gRPC that never use a proxy, the admin protos, metrics."""

from __future__ import annotations

import atexit
import functools
import importlib
import re
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import requests

from harness.paths import REPO_DIR

SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)")


def prometheus_samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample line of a Prometheus text exposition."""
    samples = {}
    for line in text.splitlines():
        match = SAMPLE_LINE.match(line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


@functools.cache
def admin_proto() -> tuple[ModuleType, ModuleType]:
    """`admin_pb2` and `admin_pb2_grpc` generated from admin-proto/proto/admin.proto."""
    from grpc_tools import protoc

    proto_dir = REPO_DIR / "admin-proto" / "proto"
    out = Path(tempfile.mkdtemp(prefix="telemetry-lake-admin-pb-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(proto_dir / "admin.proto"),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed on {proto_dir / 'admin.proto'} with exit code {rc}")
    sys.path.insert(0, str(out))
    return importlib.import_module("admin_pb2"), importlib.import_module("admin_pb2_grpc")


def http_session() -> requests.Session:
    """A session that never goes through a proxy from the environment (everything is local)."""
    session = requests.Session()
    session.trust_env = False
    return session


# gRPC honours http_proxy too; loopback traffic must never leave through one.
GRPC_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (("grpc.enable_http_proxy", 0),)


def grpc_channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=GRPC_CHANNEL_OPTIONS)
