"""Lazy reading of H&E images and patches around spots (numpy / Pillow; no AnnData).

An image is opened once per section. JPEGs are decoded at a reduced scale by the decoder itself (``draft``: 1/2,
1/4 or 1/8 of the full resolution, the nearest that still gives the requested detail), so a 9,000-px slide never
exists in memory at full resolution; other formats are decoded once and reduced. Arrays (including
``numpy.memmap`` and other lazily sliced arrays) are read by region, one patch at a time. Patches are cut from the
one reduced image and resized to ``patch_px``; no full-resolution copy per spot is ever made.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SpotImage", "check_spots"]

_MAX_REPORTED = 5


@contextmanager
def _open(path: Any) -> Any:
    """Open an image with Pillow; whole-slide sizes are expected here, so its decompression-bomb warning is off."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            yield im


def _to_uint8_rgb(a: np.ndarray) -> np.ndarray:
    """An image block as uint8 RGB (drops alpha, expands grey, rescales floats in [0, 1] and 16-bit)."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        msg = f"an image must be height x width (x 1, 3 or 4 channels); got shape {a.shape}."
        raise ValueError(msg)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    a = a[:, :, :3]
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        hi = 1.0 if float(np.nanmax(a)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(a) * (255.0 / hi), 0, 255).astype(np.uint8)
    if a.dtype == np.uint16:
        return (a >> 8).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


@dataclass
class SpotImage:
    """An H&E image and how spot coordinates map onto it.

    Parameters
    ----------
    source
        Path of an image file (JPEG, PNG, TIFF, ... anything Pillow reads) or an array (height x width x channels;
        uint8, uint16 or float in [0, 1]).
    scale
        Image pixels per coordinate unit: a spot at ``(x, y)`` lies at pixel ``(x * scale, y * scale)`` (column,
        row; origin top-left). 1 when the coordinates are in pixels of this image; scanpy / squidpy's
        ``tissue_hires_scalef`` for a hires image and full-resolution coordinates.

    Examples
    --------
    >>> import numpy as np
    >>> from mixgf.engine.histology import SpotImage
    >>> img = SpotImage(np.full((400, 300, 3), 200, dtype=np.uint8), scale=0.5)
    >>> img.size
    (300, 400)
    >>> img.patches(np.array([[200.0, 300.0]]), side=100, patch_px=32).shape
    (1, 32, 32, 3)
    """

    source: Any
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.scale) and self.scale > 0):
            msg = f"scale must be a positive number (image pixels per coordinate unit); got {self.scale!r}."
            raise ValueError(msg)
        self._cache: tuple[float, np.ndarray] | None = None
        if isinstance(self.source, (str, Path)):
            path = Path(self.source)
            if not path.is_file():
                msg = f"image file {path} does not exist."
                raise FileNotFoundError(msg)
            with _open(path) as im:  # reads the header only
                self._size = (int(im.width), int(im.height))
        else:
            shape = getattr(self.source, "shape", None)
            if shape is None or len(shape) not in (2, 3):
                msg = f"image must be a file path or a height x width (x channels) array; got {type(self.source)}."
                raise TypeError(msg)
            self._size = (int(shape[1]), int(shape[0]))

    @property
    def size(self) -> tuple[int, int]:
        """Width and height of the image in pixels."""
        return self._size

    def read(self, factor: float) -> np.ndarray:
        """The whole image at ``factor`` times its resolution (uint8 RGB; at most one reduced copy is kept).

        Parameters
        ----------
        factor
            Resolution relative to the image (``<= 1``).

        Returns
        -------
        numpy.ndarray
            Height x width x 3.
        """
        factor = float(min(max(factor, 1e-4), 1.0))
        if self._cache is not None and abs(self._cache[0] - factor) < 1e-9:
            return self._cache[1]
        from PIL import Image

        w, h = self._size
        tw, th = max(1, round(w * factor)), max(1, round(h * factor))
        if isinstance(self.source, (str, Path)):
            with _open(self.source) as im:
                if im.format == "JPEG":
                    im.draft("RGB", (tw, th))  # the decoder reduces by 1/2, 1/4 or 1/8, never below (tw, th)
                im = im.convert("RGB")
                if im.size != (tw, th):
                    im = im.resize((tw, th), Image.Resampling.BOX)
                arr = np.asarray(im)
        else:
            step = max(1, int(1.0 / factor))
            arr = _to_uint8_rgb(np.asarray(self.source[::step, ::step]))
            if arr.shape[:2] != (th, tw):
                arr = np.asarray(Image.fromarray(arr).resize((tw, th), Image.Resampling.BOX))
        self._cache = (factor, arr)
        return arr

    def patches(
        self, coords: np.ndarray, *, side: float, patch_px: int = 64, names: Any = None, fill: int = 255
    ) -> np.ndarray:
        """Square patches centred on spots, resized to ``patch_px`` (uint8, spots x patch_px x patch_px x 3).

        Parameters
        ----------
        coords
            Spot centres (spots x 2: x = column, y = row) in coordinate units.
        side
            Side of a patch in coordinate units (e.g. 1.5 spot diameters).
        patch_px
            Side of the returned patches in pixels.
        names
            Spot names for error messages.
        fill
            Value of the pixels of a patch that fall outside the image.

        Returns
        -------
        numpy.ndarray
            The patches.
        """
        from PIL import Image

        coords = check_spots(coords, self._size, self.scale, names=names)
        side_img = float(side) * self.scale  # patch side in image pixels
        if not (np.isfinite(side_img) and side_img > 0):
            msg = f"the patch side must be positive; got {side!r} coordinate units."
            raise ValueError(msg)
        factor = min(1.0, patch_px / side_img)
        whole = isinstance(self.source, (str, Path)) or factor < 1.0
        out = np.empty((len(coords), patch_px, patch_px, 3), dtype=np.uint8)
        arr = self.read(factor) if whole else None
        f = factor if whole else 1.0
        s = max(1, round(side_img * f))
        for i, (x, y) in enumerate(coords * self.scale * f):
            x0, y0 = round(x - s / 2), round(y - s / 2)
            block = np.full((s, s, 3), fill, dtype=np.uint8)
            H, W = arr.shape[:2] if arr is not None else (self._size[1], self._size[0])
            xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + s, W), min(y0 + s, H)
            if xb > xa and yb > ya:
                src = arr[ya:yb, xa:xb] if arr is not None else _to_uint8_rgb(np.asarray(self.source[ya:yb, xa:xb]))
                block[ya - y0 : yb - y0, xa - x0 : xb - x0] = src
            if s != patch_px:
                block = np.asarray(Image.fromarray(block).resize((patch_px, patch_px), Image.Resampling.BILINEAR))
            out[i] = block
        return out


def check_spots(coords: Any, size: tuple[int, int], scale: float, *, names: Any = None) -> np.ndarray:
    """Validate spot coordinates against an image: finite, spots x 2, every centre inside the image.

    Parameters
    ----------
    coords
        Spot centres in coordinate units (spots x 2: x, y).
    size
        Image width and height in pixels.
    scale
        Image pixels per coordinate unit.
    names
        Spot names for error messages.

    Returns
    -------
    numpy.ndarray
        The coordinates as float64.
    """
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 2:
        msg = f"spot coordinates must be spots x 2 (x, y); got shape {c.shape}."
        raise ValueError(msg)
    names = np.asarray([str(i) for i in range(len(c))] if names is None else list(map(str, names)))
    bad = ~np.isfinite(c).all(axis=1)
    if bad.any():
        msg = f"{bad.sum()} spot(s) have non-finite coordinates, e.g. {names[bad][:_MAX_REPORTED].tolist()}."
        raise ValueError(msg)
    w, h = size
    px = c * scale
    out = (px[:, 0] < 0) | (px[:, 0] >= w) | (px[:, 1] < 0) | (px[:, 1] >= h)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        msg = (
            f"{out.sum()} of {len(c)} spots lie outside the {w} x {h} px image, e.g. spot {str(names[i])!r} at "
            f"({c[i, 0]:.1f}, {c[i, 1]:.1f}) -> pixel ({px[i, 0]:.1f}, {px[i, 1]:.1f}) with scale {scale:g}. Check "
            "the scale factor (image pixels per coordinate unit, e.g. tissue_hires_scalef) and that the coordinates "
            "are (x = column, y = row) of this image."
        )
        raise ValueError(msg)
    return c
