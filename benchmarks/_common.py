"""Helpers shared by the benchmark scripts: memory of this process and their sections of docs/benchmarks.md."""

from __future__ import annotations

import re
from pathlib import Path

DOCS_INTRO = (
    "# Benchmarks\n\n"
    "Measured numbers for mixgf, produced by the scripts in `benchmarks/` (see `benchmarks/README.md`). "
    "Each section says when, on which machine and with which command its numbers were measured; rerun the "
    "command to update it. Benchmarks are not tests.\n\n"
)


def memory_mb() -> dict[str, float]:
    """Current (``VmRSS``) and peak (``VmHWM``) resident set size of this process, MB."""
    status = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024 for k in ("VmRSS", "VmHWM")}


def reset_peak_memory() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def write_docs_section(path: Path, heading: str, section: str) -> None:
    """Replace the ``## `` section that starts with ``heading`` in ``path`` by ``section`` (or append it)."""
    doc = path.read_text() if path.exists() else DOCS_INTRO
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", doc, count=1)
    else:
        doc = doc.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc.rstrip("\n") + "\n")
    print(f"wrote {path}")
