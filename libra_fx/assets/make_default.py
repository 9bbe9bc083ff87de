"""Draw the packaged default image used by ``libra-fx explain`` when no image is given.

The image is procedural (no download, no licence question): a wood-grain-like textured
background with three coloured shapes, so heatmaps have distinct objects to land on.
Deterministic: rerunning it reproduces ``default.png`` byte for byte.

Example:
    python -m libra_fx.assets.make_default            # rewrites libra_fx/assets/default.png
    python libra_fx/assets/make_default.py out.png    # writes elsewhere
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 224
DEFAULT_PATH = Path(__file__).with_name("default.png")


def _background(rng: np.random.Generator) -> Image.Image:
    """Smooth warm texture; low-frequency so the PNG stays a few tens of KB."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    grain = np.sin(18 * xx + 4 * np.sin(5 * yy)) * 0.5 + 0.5
    noise = rng.normal(0, 1, (SIZE // 8, SIZE // 8)).astype(np.float32)
    noise = np.kron(noise, np.ones((8, 8), np.float32))  # blocky, blurred below
    tex = 0.75 * grain + 0.25 * (noise - noise.min()) / (np.ptp(noise) + 1e-6)
    rgb = np.stack([150 + 60 * tex, 120 + 50 * tex, 80 + 30 * tex], axis=-1)
    img = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    return img.filter(ImageFilter.GaussianBlur(3))


def _shapes(img: Image.Image) -> Image.Image:
    """A red disc, a blue square and a green triangle, with soft shadows."""
    shadow = Image.new("L", img.size, 0)
    sd = ImageDraw.Draw(shadow)
    shapes = [
        ("ellipse", [28, 34, 104, 110], (205, 40, 45)),
        ("rectangle", [126, 52, 196, 122], (40, 80, 200)),
        ("polygon", [(64, 200), (112, 128), (160, 200)], (40, 160, 70)),
    ]
    for kind, xy, _ in shapes:
        off = [(x + 5, y + 5) for x, y in xy] if kind == "polygon" else [v + 5 for v in xy]
        getattr(sd, kind)(off, fill=120)
    shadow = shadow.filter(ImageFilter.GaussianBlur(4))
    img = Image.composite(Image.new("RGB", img.size, (40, 30, 20)), img, shadow)
    draw = ImageDraw.Draw(img)
    for kind, xy, colour in shapes:
        getattr(draw, kind)(xy, fill=colour, outline=(20, 20, 20))
    # A highlight on the disc, so it reads as a ball rather than a flat patch.
    draw.ellipse([46, 48, 66, 66], fill=(240, 150, 150))
    return img


def make_default(path: str | Path = DEFAULT_PATH, seed: int = 0) -> Path:
    """Render the default sample image.

    Args:
        path: where to write the PNG.
        seed: seed of the background noise.

    Returns:
        The path written.

    Example:
        >>> make_default("/tmp/sample.png").name
        'sample.png'
    """
    rng = np.random.default_rng(seed)
    img = _shapes(_background(rng))
    path = Path(path)
    img.save(path, format="PNG", optimize=True)
    return path


if __name__ == "__main__":
    print(make_default(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_PATH))
