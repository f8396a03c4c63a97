"""Package-wide settings (:data:`mixgf.settings`)."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

_VERBOSITY = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}


class MixgfSettings:
    """Settings shared by all mixgf functions.

    Every attribute is validated on assignment. Use :meth:`~mixgf.settings.override` to change settings temporarily.

    Attributes
    ----------
    verbosity
        ``"error"``, ``"warning"``, ``"info"`` (default) or ``"debug"``: what the ``mixgf`` logger prints.
    progress_bar
        Show `tqdm` progress bars on loops a user waits for.
    chunk_size
        Cells processed at once by :func:`mixgf.pp.rank_tokenize` and :func:`mixgf.pp.gene_medians`;
        peak memory grows with it.
    device
        Default torch device for model work: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``,
        ``"cuda:1"``, ….
    seed
        Default random seed of functions that sample.
    cpu_fast_path
        fp32 inference on the CPU packs padded batches, runs unmasked fused attention per sequence and (on x86)
        oneDNN matrix products: the same function to about 1e-6, faster. ``False`` runs the generic padded path.
        Defaults to the environment variable ``MIXGF_CPU_FAST_PATH`` (``0``, ``false``, ``no`` or ``off``
        switch it off) at import, else ``True``.

    Examples
    --------
    >>> import mixgf as mgf
    >>> mgf.settings.device
    'auto'
    >>> before = mgf.settings.chunk_size
    >>> mgf.settings.chunk_size = 1024  # fewer cells per chunk in rank_tokenize: less memory
    >>> mgf.settings.chunk_size
    1024
    >>> mgf.settings.chunk_size = before
    >>> mgf.settings.verbosity = "loud"
    Traceback (most recent call last):
    ...
    ValueError: verbosity must be one of ['debug', 'error', 'info', 'warning'], got 'loud'.
    """

    _fields = ("verbosity", "progress_bar", "chunk_size", "device", "seed", "cpu_fast_path")

    def __init__(self) -> None:
        self._verbosity = "info"
        self.progress_bar = True
        self.chunk_size = 4096
        self.device = "auto"
        self.seed = 0
        self.cpu_fast_path = os.environ.get("MIXGF_CPU_FAST_PATH", "1").strip().lower() not in (
            "0",
            "false",
            "no",
            "off",
        )
        self._apply_verbosity()

    @property
    def verbosity(self) -> str:
        """Log level of the ``mixgf`` logger."""
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: str) -> None:
        if value not in _VERBOSITY:
            msg = f"verbosity must be one of {sorted(_VERBOSITY)}, got {value!r}."
            raise ValueError(msg)
        self._verbosity = value
        self._apply_verbosity()

    def _apply_verbosity(self) -> None:
        from ._logging import logger

        logger.setLevel(_VERBOSITY[self._verbosity])

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and name not in self._fields:
            msg = f"mixgf.settings has no setting {name!r}; known settings: {', '.join(self._fields)}."
            raise AttributeError(msg)
        if name == "chunk_size" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            msg = f"chunk_size must be a positive integer, got {value!r}."
            raise ValueError(msg)
        if name in ("progress_bar", "cpu_fast_path") and not isinstance(value, bool):
            msg = f"{name} must be True or False, got {value!r}."
            raise ValueError(msg)
        if name == "seed" and (not isinstance(value, int) or isinstance(value, bool)):
            msg = f"seed must be an integer, got {value!r}."
            raise ValueError(msg)
        if name == "device" and not isinstance(value, str):
            msg = f"device must be a string such as 'auto', 'cpu' or 'cuda:0', got {value!r}."
            raise ValueError(msg)
        object.__setattr__(self, name, value)

    @contextmanager
    def override(self, **kwargs: Any) -> Iterator[MixgfSettings]:
        """Change settings inside a ``with`` block and restore them afterwards.

        Examples
        --------
        >>> import mixgf as mgf
        >>> with mgf.settings.override(chunk_size=512):
        ...     mgf.settings.chunk_size
        512
        """
        old = {k: getattr(self, k) for k in kwargs}
        try:
            for k, v in kwargs.items():
                setattr(self, k, v)
            yield self
        finally:
            for k, v in old.items():
                setattr(self, k, v)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._fields)
        return f"MixgfSettings({inner})"


settings = MixgfSettings()
