"""Shared ending of the plot functions: return the Axes, the Figure, or show."""

from __future__ import annotations

from typing import Any


def finish(fig: Any, ax: Any, *, show: bool | None, return_fig: bool) -> Any:
    """``return_fig`` -> the Figure; ``show`` (default: scanpy's ``settings.autoshow``) -> show and `None`; else Axes."""
    if return_fig:
        return fig
    if show is None:
        import scanpy as sc

        show = sc.settings.autoshow
    if show:
        import matplotlib.pyplot as plt

        plt.show()
        return None
    return ax
