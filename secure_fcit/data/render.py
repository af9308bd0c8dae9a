"""Drawing helpers for the synthetic benchmark: shapes, icons, text, bars and grid cells.

Everything is drawn with PIL from plain numbers, so the same arguments always give the same pixels.
Randomness lives in the task generators, never here. Coordinates are pixels; boxes are
``(x0, y0, x1, y1)`` with ``x1``/``y1`` exclusive-ish as PIL uses them.
"""

from __future__ import annotations

import math
from functools import lru_cache

from PIL import Image, ImageChops, ImageDraw, ImageFont

from secure_fcit.errors import ConfigError

__all__ = [
    "PALETTE",
    "STRONG_COLORS",
    "SHAPES",
    "STYLES",
    "ICONS",
    "ICON_COLORS",
    "Box",
    "Color",
    "new_canvas",
    "cell_box",
    "inset_box",
    "draw_shape",
    "draw_icon",
    "draw_bar",
    "draw_frame",
    "load_font",
    "fit_font_size",
    "draw_text",
]

Color = tuple[int, int, int]
Box = tuple[float, float, float, float]

# A small palette of strong, easily told-apart colors; names are answer words.
PALETTE: dict[str, Color] = {
    "red": (220, 30, 30),
    "green": (30, 165, 50),
    "blue": (35, 70, 225),
    "yellow": (240, 205, 20),
    "purple": (140, 45, 190),
    "orange": (250, 125, 15),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
STRONG_COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "arrow")
STYLES: tuple[str, ...] = ("filled", "outline", "striped", "dotted")
ICONS: tuple[str, ...] = ("sun", "moon", "heart", "bolt", "drop", "leaf")
# Each icon kind has one canonical color, as icon sets usually do; the silhouette still differs.
ICON_COLORS: dict[str, str] = {
    "sun": "orange",
    "moon": "yellow",
    "heart": "red",
    "bolt": "purple",
    "drop": "blue",
    "leaf": "green",
}


def new_canvas(size: int, background: Color) -> Image.Image:
    """A plain RGB square of ``size`` pixels filled with ``background``."""
    if size < 16:
        raise ConfigError(f"image size must be at least 16 pixels, got {size}")
    return Image.new("RGB", (size, size), background)


def cell_box(size: int, grid: int, row: int, col: int) -> Box:
    """The pixel box of cell (row, col) of a ``grid`` x ``grid`` layout over a square canvas."""
    step = size / grid
    return (col * step, row * step, (col + 1) * step, (row + 1) * step)


def inset_box(box: Box, side: float, dx: float = 0.0, dy: float = 0.0) -> Box:
    """A square of side ``side`` centred in ``box``, shifted by (dx, dy)."""
    cx = (box[0] + box[2]) / 2 + dx
    cy = (box[1] + box[3]) / 2 + dy
    half = side / 2
    return (cx - half, cy - half, cx + half, cy + half)


def _shape_polygon(shape: str, box: Box) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = x0 + w / 2, y0 + h / 2

    def at(u: float, v: float) -> tuple[float, float]:
        return (x0 + u * w, y0 + v * h)

    if shape == "square":
        return [at(0, 0), at(1, 0), at(1, 1), at(0, 1)]
    if shape == "triangle":
        return [at(0.5, 0), at(1, 1), at(0, 1)]
    if shape == "diamond":
        return [at(0.5, 0), at(1, 0.5), at(0.5, 1), at(0, 0.5)]
    if shape == "hexagon":
        return [
            (cx + w / 2 * math.cos(math.pi / 3 * k), cy + h / 2 * math.sin(math.pi / 3 * k)) for k in range(6)
        ]
    if shape == "star":
        points = []
        for k in range(10):
            radius = 0.5 if k % 2 == 0 else 0.21
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * w * math.cos(angle), cy + radius * h * math.sin(angle)))
        return points
    if shape == "cross":
        a, b = 1 / 3, 2 / 3
        uv = [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
        return [at(u, v) for u, v in uv]
    if shape == "arrow":
        uv = [(0, 0.32), (0.55, 0.32), (0.55, 0.05), (1, 0.5), (0.55, 0.95), (0.55, 0.68), (0, 0.68)]
        return [at(u, v) for u, v in uv]
    raise ConfigError(f"unknown shape {shape!r}; valid shapes: {', '.join(SHAPES)}")


def _draw_plain(
    draw: ImageDraw.ImageDraw, shape: str, box: Box, fill: object, outline: object, width: int
) -> None:
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif shape == "square":
        draw.rectangle(box, fill=fill, outline=outline, width=width)
    else:
        draw.polygon(_shape_polygon(shape, box), fill=fill, outline=outline, width=width)


def _pattern_mask(size: tuple[int, int], style: str, period: int) -> Image.Image:
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    w, h = size
    if style == "striped":
        for y in range(0, h, period):
            draw.rectangle((0, y, w, y + period // 2 - 1), fill=255)
    else:  # dotted
        radius = max(1, period // 4)
        for y in range(period // 2, h, period):
            for x in range(period // 2, w, period):
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    return mask


def draw_shape(image: Image.Image, shape: str, box: Box, color: Color, style: str = "filled") -> None:
    """Draw ``shape`` inside ``box`` on ``image`` in one of :data:`STYLES`.

    ``outline`` keeps only a thick border; ``striped`` and ``dotted`` fill the silhouette with a
    pattern and keep a thin border so the outline stays readable at 64 pixels.
    """
    if style not in STYLES:
        raise ConfigError(f"unknown style {style!r}; valid styles: {', '.join(STYLES)}")
    if shape not in SHAPES:
        raise ConfigError(f"unknown shape {shape!r}; valid shapes: {', '.join(SHAPES)}")
    side = min(box[2] - box[0], box[3] - box[1])
    draw = ImageDraw.Draw(image)
    if style == "filled":
        _draw_plain(draw, shape, box, color, None, 0)
        return
    border = max(2, round(side / 9))
    if style == "outline":
        _draw_plain(draw, shape, box, None, color, border)
        return
    silhouette = Image.new("L", image.size, 0)
    _draw_plain(ImageDraw.Draw(silhouette), shape, box, 255, None, 0)
    pattern = _pattern_mask(image.size, style, max(4, round(side / 6)))
    image.paste(color, (0, 0), ImageChops.multiply(silhouette, pattern))
    _draw_plain(draw, shape, box, None, color, max(1, border // 2))


def draw_icon(image: Image.Image, kind: str, box: Box, color: Color, background: Color) -> None:
    """Draw one of :data:`ICONS` inside ``box``; ``background`` cuts the moon's crescent."""
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = x0 + w / 2, y0 + h / 2

    def at(u: float, v: float) -> tuple[float, float]:
        return (x0 + u * w, y0 + v * h)

    def disc(u: float, v: float, r: float, fill: Color) -> None:
        draw.ellipse((x0 + (u - r) * w, y0 + (v - r) * h, x0 + (u + r) * w, y0 + (v + r) * h), fill=fill)

    if kind == "sun":
        ray = max(1, round(w / 10))
        for k in range(8):
            angle = k * math.pi / 4
            draw.line(
                (
                    cx + 0.3 * w * math.cos(angle),
                    cy + 0.3 * h * math.sin(angle),
                    cx + 0.5 * w * math.cos(angle),
                    cy + 0.5 * h * math.sin(angle),
                ),
                fill=color,
                width=ray,
            )
        disc(0.5, 0.5, 0.26, color)
    elif kind == "moon":
        disc(0.5, 0.5, 0.45, color)
        disc(0.72, 0.38, 0.38, background)
    elif kind == "heart":
        disc(0.3, 0.33, 0.23, color)
        disc(0.7, 0.33, 0.23, color)
        draw.polygon([at(0.08, 0.42), at(0.92, 0.42), at(0.5, 0.95)], fill=color)
    elif kind == "bolt":
        uv = [(0.62, 0), (0.18, 0.56), (0.46, 0.56), (0.34, 1), (0.84, 0.4), (0.56, 0.4), (0.74, 0)]
        draw.polygon([at(u, v) for u, v in uv], fill=color)
    elif kind == "drop":
        disc(0.5, 0.64, 0.32, color)
        draw.polygon([at(0.5, 0.0), at(0.8, 0.55), at(0.2, 0.55)], fill=color)
    elif kind == "leaf":
        # A lens between two arcs along the diagonal, with a short stem at the bottom left.
        points = []
        for k in range(13):
            t = k / 12
            bulge = 0.32 * math.sin(math.pi * t)
            points.append(at(0.2 + 0.75 * t - bulge * 0.7, 0.8 - 0.75 * t - bulge * 0.7))
        for k in range(12, -1, -1):
            t = k / 12
            bulge = 0.32 * math.sin(math.pi * t)
            points.append(at(0.2 + 0.75 * t + bulge * 0.7, 0.8 - 0.75 * t + bulge * 0.7))
        draw.polygon(points, fill=color)
        draw.line((*at(0.08, 0.92), *at(0.3, 0.7)), fill=color, width=max(1, round(w / 10)))
    else:
        raise ConfigError(f"unknown icon {kind!r}; valid icons: {', '.join(ICONS)}")


def draw_bar(image: Image.Image, x0: float, x1: float, baseline: float, height: float, color: Color) -> None:
    """A vertical bar standing on ``baseline`` (a y pixel), ``height`` pixels tall."""
    ImageDraw.Draw(image).rectangle((x0, baseline - height, x1, baseline), fill=color)


def draw_frame(image: Image.Image, box: Box, color: Color, width: int) -> None:
    """An unfilled rectangle of ``width`` pixels along ``box``'s inner edge."""
    ImageDraw.Draw(image).rectangle(box, outline=color, width=width)


@lru_cache(maxsize=64)
def load_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's bundled default font at ``size`` pixels (no font files needed, works offline)."""
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=1024)
def fit_font_size(
    text: str, max_width: float, max_height: float, largest: int = 40, smallest: int = 6
) -> int:
    """The largest font size whose rendering of ``text`` fits in max_width x max_height.

    The height is the font's full line (ascent + descent), so every word of a column fits the same box.
    """
    for size in range(largest, smallest - 1, -1):
        font = load_font(size)
        left, _, right, _ = font.getbbox(text)
        ascent, descent = font.getmetrics()
        if right - left <= max_width and ascent + descent <= max_height:
            return size
    return smallest


def draw_text(image: Image.Image, text: str, center: tuple[float, float], color: Color, size: int) -> None:
    """Draw ``text`` at font ``size``, centred on ``center`` (middle of the line, not of the ink)."""
    ImageDraw.Draw(image).text(center, text, fill=color, font=load_font(size), anchor="mm")
