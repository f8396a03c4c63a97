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


def place_labels(ax: Any, x: Any, y: Any, labels: list[str], *, fontsize: float = 8, avoid: Any = None) -> list[Any]:
    """Label points without labels overlapping each other, the points or the axes' edges (deterministic).

    A small greedy version of the repelled labels of adjustText (used by pertpy and decoupler): each label, in the
    order given (most important first), takes the first spot around its point, at growing distances, whose box
    stays inside the axes and touches no label already placed and no point; a label moved away from its point gets
    a thin leader line. When no spot is free, the one with the fewest collisions is used. The figure's layout is
    computed first, so the boxes are measured where they will be drawn.

    Parameters
    ----------
    ax
        The Axes with the points.
    x, y
        Data coordinates of the points to label.
    labels
        Their labels.
    fontsize
        Font size of the labels.
    avoid
        ``(n, 2)`` data coordinates of every other point drawn (also kept free); `None`: only the labelled points.

    Returns
    -------
    list of matplotlib.text.Annotation
        The labels.
    """
    import numpy as np
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    fig = ax.figure
    fig.draw_without_rendering()  # final layout (constrained layout, autoscaled limits)
    to_px = ax.transData.transform
    data = np.column_stack([np.asarray(x, float), np.asarray(y, float)])
    pts = to_px(data)
    others = pts if avoid is None else np.vstack([pts, to_px(np.asarray(avoid, float).reshape(-1, 2))])
    scale = fig.dpi / 72
    bb = ax.bbox
    pad = 2 * scale
    placed: list[tuple[float, float, float, float]] = []
    dirs = [(1, 1), (-1, 1), (1, -1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
    out = []
    for (px, py), xy, text in zip(pts, data, labels):
        ext = TextPath((0, 0), text, prop=FontProperties(size=fontsize)).get_extents()
        w, h = (ext.width + 2) * scale, fontsize * 1.2 * scale
        best, best_cost = None, None
        for r in (3, 8, 15, 24, 36, 50):
            for dx, dy in dirs:
                cx = px + dx * (r * scale + w / 2) if dx else px
                cy = py + dy * (r * scale + h / 2) if dy else py
                box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                inside = (
                    box[0] >= bb.x0 + pad and box[2] <= bb.x1 - pad and box[1] >= bb.y0 + pad and box[3] <= bb.y1 - pad
                )
                hits = sum(
                    not (box[2] < o[0] or box[0] > o[2] or box[3] < o[1] or box[1] > o[3]) for o in placed
                ) + int(
                    (
                        (others[:, 0] > box[0] - pad)
                        & (others[:, 0] < box[2] + pad)
                        & (others[:, 1] > box[1] - pad)
                        & (others[:, 1] < box[3] + pad)
                    ).sum()
                )
                cost = hits + (0 if inside else 1000) + r / 100
                if best_cost is None or cost < best_cost:
                    best, best_cost = box, cost
                if hits == 0 and inside:
                    break
            if best_cost is not None and best_cost < 1:
                break
        placed.append(best)
        cx, cy = (best[0] + best[2]) / 2, (best[1] + best[3]) / 2
        far = np.hypot(cx - px, cy - py) > (w / 2 + 10 * scale)
        out.append(
            ax.annotate(
                text,
                (float(xy[0]), float(xy[1])),
                xytext=((cx - px) / scale, (cy - py) / scale),
                textcoords="offset points",
                ha="center",
                va="center",
                fontsize=fontsize,
                arrowprops={"arrowstyle": "-", "color": "0.5", "linewidth": 0.5, "shrinkA": 0, "shrinkB": 2}
                if far
                else None,
            )
        )
    return out
