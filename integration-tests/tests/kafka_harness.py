"""Old name kept for `bench/compare/compare.py` (owned elsewhere): use `harness.kafka` instead."""

from harness.kafka import Broker, Ingester, kafka_home

__all__ = ["Broker", "Ingester", "kafka_home"]
