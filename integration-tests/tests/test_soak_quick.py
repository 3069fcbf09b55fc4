"""The soak command (`soak/soak.py`) keeps working: its `--quick` run, checked from its JSON.

The quick run is the full soak made small: 15,000 real log lines with sequence ids through the
ingester, Kafka and three Kafka-mode appenders into one table on the REST catalog and S3, through
an appender `kill -9` or two, a broker restart, an appender joining and leaving, a catalog and an
object store outage, a second writer and a snapshot expiry. Every acknowledged record must be in
the table exactly once, and every planned disruption must have been done.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.paths import REPO_DIR

SOAK = REPO_DIR / "integration-tests" / "soak" / "soak.py"


@pytest.mark.timeout(420)
def test_the_quick_soak_loses_and_doubles_nothing(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    try:
        out = subprocess.run(
            [sys.executable, str(SOAK), "--quick", "--seed", "7", "--workdir", str(tmp_path / "soak")]
            + ["--json", str(results)],
            capture_output=True,
            text=True,
            timeout=400,
        )
    except subprocess.TimeoutExpired as timeout:
        printed = timeout.stdout.decode() if isinstance(timeout.stdout, bytes) else timeout.stdout or ""
        pytest.fail(f"soak.py ran past 400 s (logs under {tmp_path / 'soak'}); it printed:\n{printed[-6000:]}")
    assert results.exists(), (
        f"soak.py exited with {out.returncode} and wrote no results:\n{out.stdout[-6000:]}{out.stderr[-3000:]}"
    )
    result = json.loads(results.read_text())
    print(out.stdout[-3000:])
    assert not result["halted"], f"a disruption failed and the run was halted: {result['notes']}"
    assert result["records_sent"] == 15_000
    assert result["acknowledged"] == result["records_sent"], result["answers"]
    assert (result["lost"], result["doubled"]) == (0, 0), (result["lost_ids"], result["doubled_ids"])
    assert result["in_table"] == result["acknowledged"]
    assert result["foreign_rows"] == result["foreign_rows_written"] > 0
    assert result["unknown_rows"] == 0
    assert result["disruptions"] == result["planned"], result["notes"]
    assert not result["notes"], result["notes"]
    assert out.returncode == 0, out.stdout[-3000:]
