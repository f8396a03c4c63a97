"""The GPU suite (benchmarks/gpu_suite.py) runs end to end on the CPU with --dry-run, so it cannot rot unseen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_gpu_suite_dry_run(tmp_path):
    pytest.importorskip("transformers")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--dry-run", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "gpu_suite.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == {"tests", "embed", "delete-all", "gene-list", "pretrain"}
    assert not [r for r in rows if "error" in r or r.get("skipped")]
    assert all(r["dry_run"] for r in rows)
    embed = [r for r in rows if r["step"] == "embed" and "mgf.tl.embed" in r["what"]]
    assert embed and all(r["cos_min"] > 0.999 and r["value"] > 0 for r in embed)
    assert all(r["spearman"] > 0.9 for r in rows if r["step"] in ("delete-all", "gene-list") and "spearman" in r)
    assert "| pretrain |" in (tmp_path / "gpu_suite.md").read_text()
