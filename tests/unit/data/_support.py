"""Shared helpers of the data tests: template matching and reading objects back from pixels."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from secure_fcit.data.render import PALETTE, STRONG_COLORS


def template_regex(template: str) -> re.Pattern[str]:
    """A regex that matches the filled-in ``template``; a repeated placeholder must repeat its value."""
    pattern, seen, pos = "", set(), 0
    for match in re.finditer(r"\{(\w+)\}", template):
        pattern += re.escape(template[pos : match.start()])
        name = match.group(1)
        pattern += f"(?P={name})" if name in seen else f"(?P<{name}>\\w+)"
        seen.add(name)
        pos = match.end()
    return re.compile(pattern + re.escape(template[pos:]) + r"\Z")


def match_template(templates: tuple[str, ...], instruction: str) -> tuple[str, dict[str, str]]:
    """The template ``instruction`` was filled from, and its placeholder values."""
    for template in templates:
        found = template_regex(template).match(instruction)
        if found:
            return template, found.groupdict()
    raise AssertionError(f"instruction {instruction!r} matches no template")


def color_mask(image: Image.Image, color: str) -> np.ndarray:
    """Boolean mask of the pixels that are exactly palette ``color``."""
    pixels = np.asarray(image, dtype=np.int16)
    return np.all(pixels == np.array(PALETTE[color], dtype=np.int16), axis=-1)


def cell_window(size: int, grid: int, row: int, col: int) -> tuple[slice, slice]:
    """Array slices of cell (row, col) of a grid x grid layout on a size x size image."""
    step = size / grid
    return (
        slice(round(row * step), round((row + 1) * step)),
        slice(round(col * step), round((col + 1) * step)),
    )


def cell_objects(
    image: Image.Image, grid: int, min_pixels: int = 20
) -> dict[tuple[int, int], tuple[str, float]]:
    """(row, col) -> (dominant strong color, fill ratio of its bounding box) for non-empty cells."""
    masks = {name: color_mask(image, name) for name in STRONG_COLORS}
    found = {}
    for row in range(grid):
        for col in range(grid):
            window = cell_window(image.size[0], grid, row, col)
            counts = {name: int(mask[window].sum()) for name, mask in masks.items()}
            name = max(counts, key=counts.__getitem__)
            if counts[name] < min_pixels:
                continue
            ys, xs = np.nonzero(masks[name][window])
            area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            found[(row, col)] = (name, counts[name] / area)
    return found


def rows_with(mask: np.ndarray) -> int:
    """How many rows of ``mask`` hold at least one True (a bar's height in pixels)."""
    return int(mask.any(axis=1).sum())
