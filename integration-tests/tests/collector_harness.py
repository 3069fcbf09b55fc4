"""Old name kept for `bench/compare/compare.py` (owned elsewhere): use `harness.collector` instead."""

from harness.collector import Collector, tool

__all__ = ["Collector", "tool"]
