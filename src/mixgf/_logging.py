"""One voice for mixgf's messages: a ``mixgf`` logger, timings and user-facing warnings."""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path

logger = logging.getLogger("mixgf")
if not logger.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_handler)
    logger.propagate = False

_PKG_DIR = str(Path(__file__).parent)


def info(msg: str, *, start: float | None = None) -> float:
    """Log ``msg`` at INFO level, with the time elapsed since ``start`` when given; return the current time."""
    now = time.perf_counter()
    if start is not None:
        msg = f"{msg} ({now - start:.2f}s)"
    logger.info(msg)
    return now


def debug(msg: str) -> None:
    """Log ``msg`` at DEBUG level."""
    logger.debug(msg)


def warn(msg: str, category: type[Warning] = UserWarning) -> None:
    """Emit a warning that points at the user's code, not at mixgf's internals."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PKG_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(msg, category, stacklevel=level)
