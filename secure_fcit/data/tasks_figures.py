"""Generators of the figure and text tasks: figure_mcq, icon_qa, ocr, chart_yesno, table_math.

Bar heights come from a few discrete levels that differ by at least one level, so "tallest" is
never a matter of a pixel; text uses PIL's bundled font sized to fit the 64-pixel canvas.
"""

from __future__ import annotations

import numpy as np

from secure_fcit.data.render import (
    ICON_COLORS,
    ICONS,
    PALETTE,
    STRONG_COLORS,
    Color,
    cell_box,
    draw_bar,
    draw_frame,
    draw_icon,
    draw_text,
    fit_font_size,
    inset_box,
    load_font,
    new_canvas,
)
from secure_fcit.data.sampling import flatten_templates, light_background, pick
from secure_fcit.data.spec import Example, TaskSpec

__all__ = ["FIGURE_TASKS", "OCR_WORDS", "TABLE_ITEMS"]

WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
LEVELS = 8  # bar heights are 1..LEVELS eighths of the drawable height


# --- figure_mcq (mirrors ArxivQA: pick the panel of a multi-panel figure) -------------------------

OPTION_LETTERS = ("A", "B", "C", "D")
FIGURE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "tallest": (
        "Which panel shows the tallest bar? Answer with the option letter A, B, C or D.",
        "The figure has four panels: A (top left), B (top right), C (bottom left) and D (bottom right). "
        "Which one has the highest bar? Reply with A, B, C or D.",
        "In which panel is the bar the tallest? Options: A, B, C or D. Answer with the letter.",
        "Look at the four panels (A, B, C or D). Which panel contains the tallest bar? Give only the letter.",
        "Options: A, B, C or D (panels in reading order). Where is the highest bar? Answer with the letter.",
    ),
}


def generate_figure_mcq(rng: np.random.Generator, size: int = 64) -> Example:
    kind = "tallest"
    answer = int(rng.integers(4))
    # The tallest bar stands clearly above the others (a tiny model must be able to learn it).
    extreme = int(rng.integers(LEVELS - 1, LEVELS + 1))
    others = [int(v) for v in rng.integers(1, LEVELS // 2, size=3)]
    panel_levels = others[:answer] + [extreme] + others[answer:]
    image = new_canvas(size, WHITE)
    panel = size / 2
    for index, level in enumerate(panel_levels):
        box = cell_box(size, 2, *divmod(index, 2))
        draw_frame(image, box, (150, 150, 150), 1)
        baseline = box[3] - panel * 0.1
        half_width = panel * 0.17
        cx = (box[0] + box[2]) / 2
        height = panel * 0.76 * level / LEVELS
        draw_bar(image, cx - half_width, cx + half_width, baseline, height, PALETTE[pick(rng, STRONG_COLORS)])
    return Example(image, pick(rng, FIGURE_TEMPLATES[kind]), OPTION_LETTERS[answer])


# --- icon_qa (mirrors IconQA: name the icon in the highlighted cell) ------------------------------

ICON_TEMPLATES = (
    "What icon is inside the thick box? Answer with one word.",
    "Name the icon in the framed cell.",
    "Which picture is highlighted by the black frame?",
    "Look at the cell with the thick border. What icon does it contain?",
    "What is drawn in the outlined square? Reply with a single word.",
)


def generate_icon_qa(rng: np.random.Generator, size: int = 64) -> Example:
    background = light_background(rng, 230)
    image = new_canvas(size, background)
    # A 2x2 grid: big enough cells for a 32-pixel model input.
    kinds = [pick(rng, ICONS) for _ in range(4)]
    framed = int(rng.integers(4))
    kinds[framed] = pick(rng, ICONS)  # drawn last so the answer is uniform over the icon kinds
    cell = size / 2
    for index, kind in enumerate(kinds):
        box = cell_box(size, 2, *divmod(index, 2))
        draw_icon(image, kind, inset_box(box, cell * 0.6), PALETTE[ICON_COLORS[kind]], background)
    frame_box = cell_box(size, 2, *divmod(framed, 2))
    draw_frame(
        image,
        (frame_box[0] + 1, frame_box[1] + 1, frame_box[2] - 1, frame_box[3] - 1),
        BLACK,
        max(2, round(size / 32)),
    )
    return Example(image, pick(rng, ICON_TEMPLATES), kinds[framed])


# --- ocr (mirrors OCR-VQA: read the one word on the image) ----------------------------------------

OCR_WORDS: tuple[str, ...] = tuple("cat dog sun box map key cup hat pen bus fish bird tree lamp frog milk".split())
_INK: tuple[Color, ...] = ((0, 0, 0), (20, 30, 120), (130, 20, 20), (20, 90, 30), (70, 20, 100))
OCR_TEMPLATES = (
    "What word is written in the image?",
    "Read the text in the image and type it in lowercase.",
    "What does the text in this picture say?",
    "Transcribe the word shown in the image.",
    "Which word appears in this image? Answer with the word only.",
)


def generate_ocr(rng: np.random.Generator, size: int = 64) -> Example:
    word = pick(rng, OCR_WORDS)
    image = new_canvas(size, light_background(rng, 215))
    font_size = fit_font_size(word, size * 0.84, size * 0.5) - int(rng.integers(0, 3))
    font = load_font(font_size)
    left, _, right, _ = font.getbbox(word)
    slack_x = max(0.0, (size - (right - left)) / 2 - 2)
    slack_y = max(0.0, (size - sum(font.getmetrics())) / 2 - 1)
    slack_x, slack_y = min(slack_x, size / 16), min(slack_y, size / 16)
    center = (size / 2 + rng.uniform(-slack_x, slack_x), size / 2 + rng.uniform(-slack_y, slack_y))
    draw_text(image, word, center, pick(rng, _INK), font_size)
    return Example(image, pick(rng, OCR_TEMPLATES), word)


# --- chart_yesno (mirrors FigureQA: yes/no about a bar chart) -------------------------------------

CHART_TEMPLATES: dict[str, tuple[str, ...]] = {
    "tallest": (
        "Is the {color} bar the tallest?",
        "Is the {color} bar the highest one in the chart?",
        "Does the {color} bar have the greatest height?",
        "Looking at the chart, is the {color} bar taller than all the others?",
        "Is the {color} bar taller than the other bars?",
    ),
}


def generate_chart_yesno(rng: np.random.Generator, size: int = 64) -> Example:
    colors = [STRONG_COLORS[int(i)] for i in rng.choice(len(STRONG_COLORS), size=3, replace=False)]
    # One bar stands clearly above the others.
    levels = [int(v) for v in rng.integers(1, LEVELS // 2, size=3)]
    levels[int(rng.integers(3))] = int(rng.integers(LEVELS - 1, LEVELS + 1))
    kind = "tallest"
    extreme = int(np.argmax(levels) if kind == "tallest" else np.argmin(levels))
    yes = bool(rng.random() < 0.5)
    target = extreme if yes else pick(rng, [i for i in range(3) if i != extreme])
    image = new_canvas(size, WHITE)
    left, baseline, top, right = size * 0.12, size * 0.9, size * 0.08, size * 0.96
    slot = (right - left) / 3
    for i, (color, level) in enumerate(zip(colors, levels, strict=True)):
        x0 = left + i * slot + slot * 0.18
        draw_bar(image, x0, x0 + slot * 0.64, baseline, (baseline - top) * level / LEVELS, PALETTE[color])
    draw_frame(image, (left - 1, baseline, right, baseline), BLACK, 1)  # x axis
    draw_frame(image, (left - 1, top - 2, left - 1, baseline), BLACK, 1)  # y axis
    instruction = pick(rng, CHART_TEMPLATES[kind]).format(color=colors[target])
    return Example(image, instruction, "yes" if yes else "no")


# --- table_math (mirrors TabMWP: arithmetic over a small rendered table) --------------------------

TABLE_ITEMS = ("cups", "pens", "hats", "keys", "maps", "bags", "eggs", "toys")
TABLE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "item": (
        "How many {item} are there?",
        "According to the table, how many {item} are there? Answer with a number.",
        "Look at the table. What is the count of {item}?",
        "Read the table: how many {item} are listed?",
    ),
    "total": (
        "What is the total count?",
        "Add up all the counts in the table. What is the total?",
        "What is the sum of the counts in the table? Answer with a number.",
    ),
}


def generate_table_math(rng: np.random.Generator, size: int = 64) -> Example:
    items = [TABLE_ITEMS[int(i)] for i in rng.choice(len(TABLE_ITEMS), size=3, replace=False)]
    counts = [int(v) for v in rng.integers(1, 10, size=3)]
    image = new_canvas(size, WHITE)
    x0, y0, x1, y1 = 1.0, 1.0, size - 2.0, size - 2.0
    split = x0 + (x1 - x0) * 0.68
    row_h = (y1 - y0) / 3
    font_size = min(fit_font_size(item, split - x0 - 4, row_h - 2) for item in TABLE_ITEMS)
    draw_frame(image, (x0, y0, x1, y1), BLACK, 1)
    draw_frame(image, (split, y0, split, y1), BLACK, 1)
    for row, (item, count) in enumerate(zip(items, counts, strict=True)):
        top = y0 + row * row_h
        if row:
            draw_frame(image, (x0, top, x1, top), BLACK, 1)
        draw_text(image, item, ((x0 + split) / 2, top + row_h / 2), BLACK, font_size)
        draw_text(image, str(count), ((split + x1) / 2, top + row_h / 2), BLACK, font_size)
    kind = "item" if rng.random() < 0.6 else "total"
    target = int(rng.integers(3))
    answer = counts[target] if kind == "item" else sum(counts)
    instruction = pick(rng, TABLE_TEMPLATES[kind]).format(item=items[target])
    return Example(image, instruction, str(answer))


FIGURE_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("figure_mcq", "ArxivQA", "option", flatten_templates(FIGURE_TEMPLATES), generate_figure_mcq),
    TaskSpec("icon_qa", "IconQA", "exact", ICON_TEMPLATES, generate_icon_qa),
    TaskSpec("ocr", "OCR-VQA", "exact", OCR_TEMPLATES, generate_ocr),
    TaskSpec("chart_yesno", "FigureQA", "exact", flatten_templates(CHART_TEMPLATES), generate_chart_yesno),
    TaskSpec("table_math", "TabMWP", "exact", flatten_templates(TABLE_TEMPLATES), generate_table_math),
)
