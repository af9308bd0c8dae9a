"""Generators of the object-scene tasks: classification, counting_math, captions, attribute_qa, grounding.

Objects sit in the cells of a coarse grid (never overlapping) so that positions are discrete and a
tiny vision tower with 8x8 patches can resolve them. Every draw comes from the ``rng`` argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from secure_fcit.data.render import (
    PALETTE,
    SHAPES,
    STRONG_COLORS,
    STYLES,
    cell_box,
    draw_shape,
    inset_box,
    new_canvas,
)
from secure_fcit.data.sampling import dark_background, flatten_templates, light_background, pick
from secure_fcit.data.spec import Example, TaskSpec

__all__ = ["OBJECT_TASKS", "caption_for", "format_bbox"]


def _cells(rng: np.random.Generator, grid: int, count: int) -> list[tuple[int, int]]:
    """``count`` distinct (row, col) cells of a grid x grid layout."""
    return [divmod(int(c), grid) for c in rng.choice(grid * grid, size=count, replace=False)]


def _distinct_pairs(
    rng: np.random.Generator, colors: Sequence[str], shapes: Sequence[str], count: int
) -> list[tuple[str, str]]:
    flat = rng.choice(len(colors) * len(shapes), size=count, replace=False)
    return [(colors[int(i) // len(shapes)], shapes[int(i) % len(shapes)]) for i in flat]


# --- classification (mirrors ImageNet-R: one object, many renditions) -----------------------------

CLASSIFICATION_TEMPLATES = (
    "What shape is shown in the image? Answer with one word.",
    "Name the shape in this picture.",
    "Which shape does this image depict?",
    "Identify the shape of the object. Reply with a single word.",
    "What is the main shape in the picture?",
    "Classify the object in the image by its shape.",
)


def generate_classification(rng: np.random.Generator, size: int = 64) -> Example:
    shape, style, color = pick(rng, SHAPES), pick(rng, STYLES[:2]), pick(rng, STRONG_COLORS)
    background = light_background(rng, 200) if rng.random() < 0.7 else dark_background(rng)
    image = new_canvas(size, background)
    # Renditions vary in style, colour and background; size and position vary a little, so the
    # tiny embedded model can learn the task from ~1000 examples.
    side = size * rng.uniform(0.66, 0.8)
    slack = min(size / 16, max(0.0, (size - side) / 2 - 2))
    dx, dy = (float(v) for v in rng.uniform(-slack, slack, size=2))
    draw_shape(image, shape, inset_box((0, 0, size, size), side, dx, dy), PALETTE[color], style)
    return Example(image, pick(rng, CLASSIFICATION_TEMPLATES), shape)


# --- counting_math (mirrors CLEVR-Math: count after adding or subtracting objects) ----------------

COUNT_COLORS = ("red", "green", "blue")
COUNT_SHAPES = ("circle", "square")
COUNTING_TEMPLATES: dict[str, tuple[str, ...]] = {
    "sub_color": (
        "Subtract all {color} objects. How many objects are left?",
        "Remove every {color} object. How many objects remain? Answer with a number.",
    ),
    "add": (
        "Add one {color} {shape}. How many {color} {shape}s are there?",
        "If you add a {color} {shape}, how many {color} {shape}s will there be? Answer with a number.",
    ),
    "count_color": (
        "How many {color} objects are there?",
        "Count the {color} objects. Answer with a number.",
    ),
}


def generate_counting_math(rng: np.random.Generator, size: int = 64) -> Example:
    n = int(rng.integers(1, 5))
    objects = [(pick(rng, COUNT_COLORS), pick(rng, COUNT_SHAPES)) for _ in range(n)]
    image = new_canvas(size, light_background(rng, 225))
    for (row, col), (color, shape) in zip(_cells(rng, 4, n), objects, strict=True):
        draw_shape(image, shape, inset_box(cell_box(size, 4, row, col), size / 4 * 0.78), PALETTE[color])
    kind = pick(rng, sorted(COUNTING_TEMPLATES))
    color, shape = pick(rng, COUNT_COLORS), pick(rng, COUNT_SHAPES)
    n_color = sum(c == color for c, _ in objects)
    n_both = sum(o == (color, shape) for o in objects)
    answer = {
        "sub_color": n - n_color,
        "add": n_both + 1,
        "count_color": n_color,
    }[kind]
    instruction = pick(rng, COUNTING_TEMPLATES[kind]).format(color=color, shape=shape)
    return Example(image, instruction, str(answer))


# --- captions (mirrors Flickr30k: a short deterministic description) ------------------------------

CAPTION_COLORS = ("red", "green", "blue", "yellow")
CAPTION_SHAPES = ("circle", "square", "triangle", "star")
CAPTION_TEMPLATES = (
    "Describe the image in a few words.",
    "Write a short caption for this image.",
    "What does the picture show? Give a brief caption.",
    "Provide a one-sentence description of the image.",
    "Caption this image briefly.",
)
_PLACES = (
    ("at the top left", "at the top", "at the top right"),
    ("on the left", "in the center", "on the right"),
    ("at the bottom left", "at the bottom", "at the bottom right"),
)


def caption_for(objects: Sequence[tuple[str, str, int, int]]) -> str:
    """The caption of 1 or 2 ``(color, shape, row, col)`` objects on the 3x3 grid.

    One object: its place. Two: the left one first with "to the left of"; in the same column, the
    upper one first with "above".
    """
    if len(objects) == 1:
        color, shape, row, col = objects[0]
        return f"a {color} {shape} {_PLACES[row][col]}"
    first, second = sorted(objects, key=lambda o: (o[3], o[2]))
    relation = "to the left of" if first[3] != second[3] else "above"
    return f"a {first[0]} {first[1]} {relation} a {second[0]} {second[1]}"


def generate_captions(rng: np.random.Generator, size: int = 64) -> Example:
    n = int(rng.integers(1, 3))
    pairs = _distinct_pairs(rng, CAPTION_COLORS, CAPTION_SHAPES, n)
    cells = _cells(rng, 3, n)
    image = new_canvas(size, light_background(rng, 225))
    objects = []
    for (color, shape), (row, col) in zip(pairs, cells, strict=True):
        draw_shape(image, shape, inset_box(cell_box(size, 3, row, col), size / 3 * 0.74), PALETTE[color])
        objects.append((color, shape, row, col))
    return Example(image, pick(rng, CAPTION_TEMPLATES), caption_for(objects))


# --- attribute_qa (mirrors super-CLEVR: attributes of one object among a few) ---------------------

ATTRIBUTE_SHAPES = ("circle", "square", "triangle", "star", "diamond")
ATTRIBUTE_SIZES = {"small": 0.42, "large": 0.82}  # side as a fraction of a 2x2 cell
ATTRIBUTE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": (
        "What color is the {shape}?",
        "Which color does the {shape} have? Answer with one word.",
        "Tell me the color of the {shape}.",
    ),
    "size": (
        "What size is the {color} object?",
        "How big is the {color} object? Answer with one word.",
    ),
    "shape": (
        "What shape is the {color} object?",
        "Name the shape of the {color} object.",
    ),
}


def generate_attribute_qa(rng: np.random.Generator, size: int = 64) -> Example:
    n = 2
    shapes = [ATTRIBUTE_SHAPES[int(i)] for i in rng.choice(len(ATTRIBUTE_SHAPES), size=n, replace=False)]
    colors = [STRONG_COLORS[int(i)] for i in rng.choice(len(STRONG_COLORS), size=n, replace=False)]
    sizes = [pick(rng, ("small", "large")) for _ in range(n)]
    image = new_canvas(size, light_background(rng, 225))
    for (row, col), shape, color, word in zip(_cells(rng, 2, n), shapes, colors, sizes, strict=True):
        side = size / 2 * ATTRIBUTE_SIZES[word]
        draw_shape(image, shape, inset_box(cell_box(size, 2, row, col), side), PALETTE[color])
    target = int(rng.integers(n))
    kind = pick(rng, ("color", "size", "shape"))
    answer = {"color": colors[target], "size": sizes[target], "shape": shapes[target]}[kind]
    instruction = pick(rng, ATTRIBUTE_TEMPLATES[kind]).format(shape=shapes[target], color=colors[target])
    return Example(image, instruction, answer)


# --- grounding (mirrors RefCOCO: the box of a referred object) ------------------------------------

GROUNDING_COLORS = ("red", "green", "blue", "yellow")
GROUNDING_SHAPES = ("circle", "square", "triangle", "star")
GROUNDING_TEMPLATES = (
    "Locate the {color} {shape}.",
    "Give the bounding box of the {color} {shape}.",
    "Where is the {color} {shape}? Answer with its box [x1, y1, x2, y2].",
    "Find the {color} {shape} and output its coordinates.",
    "Provide the normalized bounding box of the {color} {shape}.",
)


def format_bbox(bbox: Sequence[float]) -> str:
    """The answer text of a box: ``[x1, y1, x2, y2]`` with two decimals."""
    return "[" + ", ".join(f"{v:.2f}" for v in bbox) + "]"


def generate_grounding(rng: np.random.Generator, size: int = 64) -> Example:
    n = int(rng.integers(2, 4))
    pairs = _distinct_pairs(rng, GROUNDING_COLORS, GROUNDING_SHAPES, n)
    cells = _cells(rng, 4, n)
    image = new_canvas(size, light_background(rng, 225))
    for (color, shape), (row, col) in zip(pairs, cells, strict=True):
        draw_shape(image, shape, inset_box(cell_box(size, 4, row, col), size / 4 * 0.8), PALETTE[color])
    target = int(rng.integers(n))
    color, shape = pairs[target]
    row, col = cells[target]
    bbox = (col / 4, row / 4, (col + 1) / 4, (row + 1) / 4)
    instruction = pick(rng, GROUNDING_TEMPLATES).format(color=color, shape=shape)
    return Example(image, instruction, format_bbox(bbox), bbox)


OBJECT_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("classification", "ImageNet-R", "exact", CLASSIFICATION_TEMPLATES, generate_classification),
    TaskSpec(
        "counting_math", "CLEVR-Math", "exact", flatten_templates(COUNTING_TEMPLATES), generate_counting_math
    ),
    TaskSpec("captions", "Flickr30k", "caption", CAPTION_TEMPLATES, generate_captions),
    TaskSpec(
        "attribute_qa", "super-CLEVR", "exact", flatten_templates(ATTRIBUTE_TEMPLATES), generate_attribute_qa
    ),
    TaskSpec("grounding", "RefCOCO", "iou", GROUNDING_TEMPLATES, generate_grounding),
)
