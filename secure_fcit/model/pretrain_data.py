"""Generic synthetic image-text pairs for the base pre-training of the embedded model.

These teach generic visual and language skills — where coloured blobs sit (row/column), how many
corners an irregular polygon has, transcribing random UPPER-CASE letters and digits, which way
strokes run, and repeating words — and none of the FCIT benchmark's tasks: no shape names, no
lower-case words to read, no charts, boxes, option letters, icons, tables or captions, and none of
its instruction templates. The benchmark must not be pre-solved: `benchmarks/validity.py` checks
the base model's zero-shot score.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "KINDS",
    "GLYPHS",
    "N_COLOURS",
    "PretrainExample",
    "generate_pretrain_example",
    "pretrain_corpus",
    "dense_targets",
    "generic_prompts",
]

_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "pink": (240, 150, 190),
}
_QUADRANT_PROMPTS = (
    "List the colors of the four quarters of the picture.",
    "Name the quarter colors from top left to bottom right.",
    "Which colors fill the four quarters?",
)
_STROKE_PROMPTS = ("Which way do the strokes run?", "Describe the direction of the strokes.")
_BLOB_PROMPTS = ("Where is the {} blob?", "In which row and column is the {} blob?")
_CORNER_PROMPTS = ("How many corners does the polygon have?", "Count the corners of the polygon.")
_GLYPH_PROMPTS = ("Transcribe the characters.", "Spell out the characters one by one.")
_GLYPHS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
GLYPHS = _GLYPHS
KINDS = ("quadrants", "strokes", "blobs", "polygon", "glyphs", "echo")
_DIRECTIONS = ("horizontal", "vertical", "rising", "falling")
N_COLOURS = len(_COLOURS)
_ECHO_PROMPTS = ("Repeat after me: {}", "Say exactly this: {}", "Echo the words: {}")


@dataclass(frozen=True)
class PretrainExample:
    """An image, a generic instruction and its answer, and labels for the vision-tower stage.

    ``labels``: ``kind`` (index into KINDS), and where they apply ``corners`` (3–7),
    ``chars`` (indices into GLYPHS, in reading order) and ``direction`` (index of the stroke
    direction); absent keys do not apply.
    """

    image: Image.Image
    instruction: str
    answer: str
    labels: dict = field(default_factory=dict)


def _noise(rng: np.random.Generator, img: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(img + rng.normal(0.0, scale, img.shape), 0, 255)


def _quadrants(rng: np.random.Generator, size: int) -> PretrainExample:
    names = list(_COLOURS)
    picks = [names[i] for i in rng.integers(0, len(names), size=4)]
    img = np.zeros((size, size, 3), dtype=np.float64)
    h = size // 2
    for k, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        img[r * h : (r + 1) * h, c * h : (c + 1) * h] = _COLOURS[picks[k]]
    img = _noise(rng, img, 12.0)
    return PretrainExample(
        Image.fromarray(img.astype(np.uint8)),
        _QUADRANT_PROMPTS[int(rng.integers(len(_QUADRANT_PROMPTS)))],
        ", ".join(picks),
        {"kind": 0},
    )


def _strokes(rng: np.random.Generator, size: int) -> PretrainExample:
    d = int(rng.integers(4))
    direction = _DIRECTIONS[d]
    bg = tuple(int(v) for v in rng.integers(150, 256, size=3))
    im = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 7))):
        a = int(rng.integers(0, size))
        fg = tuple(int(v) for v in rng.integers(0, 110, size=3))
        width = int(rng.integers(1, 4))
        if direction == "horizontal":
            draw.line([(0, a), (size, a)], fill=fg, width=width)
        elif direction == "vertical":
            draw.line([(a, 0), (a, size)], fill=fg, width=width)
        elif direction == "rising":
            draw.line([(a - size, size), (a, 0)], fill=fg, width=width)
        else:
            draw.line([(a - size, 0), (a, size)], fill=fg, width=width)
    return PretrainExample(
        im, _STROKE_PROMPTS[int(rng.integers(2))], f"{direction} strokes", {"kind": 1, "direction": d}
    )


def _blobs(rng: np.random.Generator, size: int) -> PretrainExample:
    names = [c for c in _COLOURS if c not in ("white", "gray")]
    n = int(rng.integers(1, 4))
    colours = [names[i] for i in rng.choice(len(names), size=n, replace=False)]
    cells = rng.choice(16, size=n, replace=False)
    bg = tuple(int(v) for v in rng.integers(225, 256, size=3))
    im = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(im)
    step = size / 4
    for colour, cell in zip(colours, cells, strict=True):
        r, c = divmod(int(cell), 4)
        pad = step * rng.uniform(0.1, 0.3)
        box = [c * step + pad, r * step + pad, (c + 1) * step - pad, (r + 1) * step - pad]
        (draw.ellipse if rng.integers(2) else draw.rectangle)(box, fill=_COLOURS[colour])
    k = int(rng.integers(n))
    r, c = divmod(int(cells[k]), 4)
    prompt = _BLOB_PROMPTS[int(rng.integers(2))].format(colours[k])
    return PretrainExample(im, prompt, f"row {r + 1} column {c + 1}", {"kind": 2})


def _polygon(rng: np.random.Generator, size: int) -> PretrainExample:
    k = int(rng.integers(3, 8))
    # evenly spread corners, jittered: every corner stays visible
    angles = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 2 * np.pi) + rng.normal(0, 0.08, k)
    radius = size * rng.uniform(0.28, 0.45)
    cx, cy = size / 2 + rng.uniform(-4, 4, size=2)
    pts = [(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in angles]
    bg = tuple(int(v) for v in rng.integers(200, 256, size=3))
    fg = tuple(int(v) for v in rng.integers(0, 140, size=3))
    im = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(im)
    if rng.integers(2):
        draw.polygon(pts, fill=fg)
    else:
        draw.polygon(pts, outline=fg, width=2)
    return PretrainExample(im, _CORNER_PROMPTS[int(rng.integers(2))], str(k), {"kind": 3, "corners": k})


def _glyphs(rng: np.random.Generator, size: int) -> PretrainExample:
    from PIL import ImageFont

    n = int(rng.integers(2, 5))
    idx = [int(i) for i in rng.integers(0, len(_GLYPHS), size=n)]
    chars = [_GLYPHS[i] for i in idx]
    font = ImageFont.load_default(size=int(rng.integers(13, 18)))
    bg = tuple(int(v) for v in rng.integers(215, 256, size=3))
    fg = tuple(int(v) for v in rng.integers(0, 100, size=3))
    im = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(im)
    text = "".join(chars)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = rng.uniform(0, max(1.0, size - (right - left))) - left
    y = rng.uniform(0, max(1.0, size - (bottom - top))) - top
    draw.text((x, y), text, fill=fg, font=font)
    return PretrainExample(im, _GLYPH_PROMPTS[int(rng.integers(2))], " ".join(chars), {"kind": 4, "chars": idx})


def _echo(rng: np.random.Generator, size: int, words: list[str]) -> PretrainExample:
    n = int(rng.integers(1, 4))
    phrase = " ".join(words[int(i)] for i in rng.integers(0, len(words), size=n))
    grey = int(rng.integers(0, 256))
    img = _noise(rng, np.full((size, size, 3), float(grey)), 20.0)
    template = _ECHO_PROMPTS[int(rng.integers(len(_ECHO_PROMPTS)))]
    return PretrainExample(
        Image.fromarray(img.astype(np.uint8)), template.format(phrase), phrase, {"kind": 5}
    )


def generate_pretrain_example(rng: np.random.Generator, size: int, words: list[str]) -> PretrainExample:
    """One generic example; ``words`` is the vocabulary the echo exercise draws from."""
    kind = int(rng.integers(6))
    if kind == 0:
        return _quadrants(rng, size)
    if kind == 1:
        return _strokes(rng, size)
    if kind == 2:
        return _blobs(rng, size)
    if kind == 3:
        return _polygon(rng, size)
    if kind == 4:
        return _glyphs(rng, size)
    return _echo(rng, size, words)


def generic_prompts() -> list[str]:
    """The generic instructions of the pre-training mixture (a public reference corpus)."""
    texts = list(_QUADRANT_PROMPTS + _STROKE_PROMPTS + _CORNER_PROMPTS + _GLYPH_PROMPTS)
    texts += [t.format(c) for t in _BLOB_PROMPTS for c in _COLOURS]
    texts += [t.format(w) for t in _ECHO_PROMPTS for w in ("the picture", "a word", "this")]
    return texts


def pretrain_corpus() -> list[str]:
    """Every fixed string the generic pre-training uses (for the tokenizer)."""
    texts = list(_QUADRANT_PROMPTS + _STROKE_PROMPTS + _CORNER_PROMPTS + _GLYPH_PROMPTS)
    texts += [t.format("") for t in _ECHO_PROMPTS + _BLOB_PROMPTS]
    texts += [", ".join(_COLOURS), "horizontal vertical rising falling strokes", " ".join(_GLYPHS)]
    texts += [f"row {r} column {c}" for r in range(1, 5) for c in range(1, 5)]
    return texts


_PALETTE = np.array(list(_COLOURS.values()), dtype=np.float64)


def dense_targets(image: Image.Image, grid: int, sub: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell targets of a ``grid`` x ``grid`` layout (one cell per vision patch token).

    Returns ``colour`` (grid², int: 0 = no foreground, else 1 + nearest palette colour of the
    cell's foreground) and ``mask`` (grid², sub², float 0/1: the cell's foreground at sub x sub).
    Foreground = pixels far from the image's border colour. Generic: computed from pixels alone.
    """
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    h, w, _ = a.shape
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    bg = np.median(border, axis=0)
    fg = np.abs(a - bg).sum(axis=2) > 90.0
    ch, cw = h // grid, w // grid
    colour = np.zeros(grid * grid, dtype=np.int64)
    mask = np.zeros((grid * grid, sub * sub), dtype=np.float32)
    for r in range(grid):
        for c in range(grid):
            cell = fg[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw]
            k = r * grid + c
            blocks = cell[: (ch // sub) * sub, : (cw // sub) * sub].reshape(sub, ch // sub, sub, cw // sub)
            mask[k] = (blocks.mean(axis=(1, 3)) > 0.5).reshape(-1)
            if cell.mean() > 0.1:
                pix = a[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw][cell]
                colour[k] = 1 + int(np.argmin(((_PALETTE - pix.mean(axis=0)) ** 2).sum(axis=1)))
    return colour, mask
