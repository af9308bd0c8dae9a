"""Drawing helpers: every shape, style and icon draws inside its box, the same way every time."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from secure_fcit.data.render import (
    ICONS,
    PALETTE,
    SHAPES,
    STYLES,
    draw_icon,
    draw_shape,
    draw_text,
    fit_font_size,
    load_font,
    new_canvas,
)
from secure_fcit.errors import ConfigError
from tests.unit.data._support import color_mask

WHITE = (255, 255, 255)
BOX = (16, 16, 48, 48)


def _inside_only(mask: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    outside = mask.copy()
    outside[box[1] : box[3] + 1, box[0] : box[2] + 1] = False
    return bool(mask.any()) and not outside.any()


@pytest.mark.parametrize(("shape", "style"), list(itertools.product(SHAPES, STYLES)))
def test_every_shape_and_style_draws_inside_its_box(shape: str, style: str) -> None:
    images = []
    for _ in range(2):
        image = new_canvas(64, WHITE)
        draw_shape(image, shape, BOX, PALETTE["blue"], style)
        images.append(image.tobytes())
        mask = color_mask(image, "blue")
        assert _inside_only(mask, BOX) and mask.sum() >= 40
    assert images[0] == images[1]


def test_styles_of_one_shape_look_different() -> None:
    drawn = set()
    for style in STYLES:
        image = new_canvas(64, WHITE)
        draw_shape(image, "square", BOX, PALETTE["red"], style)
        drawn.add(image.tobytes())
    assert len(drawn) == len(STYLES)


@pytest.mark.parametrize("icon", ICONS)
def test_icons_draw_inside_their_box(icon: str) -> None:
    image = new_canvas(64, WHITE)
    draw_icon(image, icon, BOX, PALETTE["green"], WHITE)
    assert _inside_only(color_mask(image, "green"), BOX)


def test_text_fits_and_unknown_names_are_refused() -> None:
    size = fit_font_size("house", 50, 30)
    left, _, right, _ = load_font(size).getbbox("house")
    assert right - left <= 50 and size >= 10
    image = new_canvas(64, WHITE)
    draw_text(image, "cat", (32, 32), PALETTE["black"], size)
    assert color_mask(image, "black").any()
    with pytest.raises(ConfigError, match="unknown shape 'blob'"):
        draw_shape(image, "blob", BOX, PALETTE["red"])
    with pytest.raises(ConfigError, match="unknown style 'wavy'"):
        draw_shape(image, "circle", BOX, PALETTE["red"], "wavy")
    with pytest.raises(ConfigError, match="unknown icon 'cloud'"):
        draw_icon(image, "cloud", BOX, PALETTE["red"], WHITE)
    with pytest.raises(ConfigError, match="at least 16"):
        new_canvas(8, WHITE)
