"""Heatmap overlays: the image, plain attribution and Libra attribution side by side.

One figure per image, one row per target (class or CLIP prompt), one shared colour bar.
Matplotlib runs on the Agg backend, so this works headless and never opens a window.

Example:
    >>> rows = [Row("golden retriever", plain_map, libra_map)]
    >>> save_overlay(image, rows, "out/dog.png", method="fullgrad+", title="vit_tiny · dog.jpg")
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: the CLI must not need a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

#: Size of one panel in inches, and output resolution; together they fix the PNG size.
PANEL_INCHES = 2.4
HEADER_INCHES = 0.6
COLORBAR_INCHES = 0.8
DPI = 100
CMAP = "RdBu_r"  # diverging: attributions are signed, red = evidence for the target
ALPHA = 0.6
#: Maps are scaled by this percentile of |map| so one hot pixel does not wash out the rest.
CLIP_PERCENTILE = 99.5


@dataclass
class Row:
    """One target's maps. Arrays are ``(h, w)``; they are stretched over the image."""

    label: str
    plain: np.ndarray
    libra: np.ndarray
    plain_note: str = ""  # caption under the panel, e.g. the completeness error
    libra_note: str = ""


def figure_size_px(n_rows: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of the PNG ``save_overlay`` writes for ``n_rows`` rows.

    Example:
        >>> figure_size_px(1)
        (800, 300)
    """
    width = 3 * PANEL_INCHES + COLORBAR_INCHES
    height = n_rows * PANEL_INCHES + HEADER_INCHES
    return int(round(width * DPI)), int(round(height * DPI))


def normalise(heatmap) -> np.ndarray:
    """Scale a signed map to ``[-1, 1]`` by a high percentile of its magnitude.

    Example:
        >>> normalise(np.array([[0.0, 2.0], [-1.0, 4.0]])).max() <= 1
        True
    """
    arr = _to_numpy(heatmap).astype(np.float64)
    scale = np.percentile(np.abs(arr), CLIP_PERCENTILE) if arr.size else 0.0
    if not np.isfinite(scale) or scale <= 0:
        scale = np.abs(arr).max() or 1.0
    return np.clip(arr / scale, -1.0, 1.0)


def to_display_image(tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo normalisation of a ``(C, H, W)`` (or ``(1, C, H, W)``) tensor to an ``(H, W, 3)`` array in [0, 1]."""
    arr = _to_numpy(tensor)
    if arr.ndim == 4:
        arr = arr[0]
    arr = arr * np.asarray(std)[:, None, None] + np.asarray(mean)[:, None, None]
    if arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    return np.clip(arr.transpose(1, 2, 0), 0.0, 1.0)


def save_overlay(
    image: np.ndarray,
    rows: Sequence[Row],
    path: str | Path,
    *,
    method: str = "fullgrad+",
    title: str = "",
) -> Path:
    """Write the plain-vs-Libra comparison figure for one image.

    Args:
        image: ``(H, W, 3)`` float array in [0, 1] (see ``to_display_image``).
        rows: one ``Row`` per target.
        path: PNG to write (parent folders are created).
        method: attribution method, used in the column titles.
        title: figure title (model, image name, weights note).

    Returns:
        The path written; its size is ``figure_size_px(len(rows))``.

    Example:
        >>> save_overlay(np.zeros((64, 64, 3)), [Row("cat", np.ones((4, 4)), np.ones((4, 4)))], "/tmp/x.png")
        PosixPath('/tmp/x.png')
    """
    if not rows:
        raise ValueError("save_overlay needs at least one row")
    width_px, height_px = figure_size_px(len(rows))
    fig = plt.figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    grid = fig.add_gridspec(
        len(rows), 4, width_ratios=[1, 1, 1, 0.07],
        left=0.05, right=0.93, bottom=0.02, top=1 - HEADER_INCHES / (height_px / DPI),
        wspace=0.05, hspace=0.12,
    )
    h, w = image.shape[:2]
    extent = (0, w, h, 0)  # stretch coarse (token-grid) maps over the full image
    mappable = None
    for r, row in enumerate(rows):
        panels = [
            ("image", None, ""),
            (f"plain {method}", row.plain, row.plain_note),
            (f"Libra {method}", row.libra, row.libra_note),
        ]
        for c, (name, heatmap, note) in enumerate(panels):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(image, extent=extent)
            if heatmap is not None:
                mappable = ax.imshow(
                    normalise(heatmap), cmap=CMAP, vmin=-1, vmax=1, alpha=ALPHA,
                    extent=extent, interpolation="bilinear",
                )
            if note:
                ax.text(0.02, 0.02, note, transform=ax.transAxes, fontsize=7, va="bottom",
                        bbox={"facecolor": "white", "alpha": 0.8, "pad": 1.5, "linewidth": 0})
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
        fig.axes[-3].set_ylabel(_short(row.label), fontsize=8)
    bar = fig.colorbar(mappable, cax=fig.add_subplot(grid[:, 3]))
    bar.set_label("relevance / max |relevance| (per map)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.12 * HEADER_INCHES / (height_px / DPI), va="top")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No bbox_inches="tight": the PNG size must be predictable (figure_size_px).
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path


def _short(label: str, width: int = 22) -> str:
    """Fit a label beside a panel: first synonym of an ImageNet name, wrapped to two lines."""
    first = label.split(",")[0].strip()
    return "\n".join(textwrap.wrap(first, width)[:2])


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value)
