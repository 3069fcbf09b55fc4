"""Old name kept for `bench/compare/compare.py` (owned elsewhere): use `harness.*` instead."""

from harness.config import merge_config
from harness.lake import Appender
from harness.paths import REPO_DIR, loghub_dir

__all__ = ["REPO_DIR", "Appender", "loghub_dir", "merge_config"]
