"""The task registry: every task renders valid, deterministic examples whose answers fit the picture."""

from __future__ import annotations

import re
from collections import Counter
from functools import cache

import numpy as np
import pytest

from secure_fcit.data import TASK_NAMES, TASKS, Example, TaskSpec, corpus_text, get_task, task_rng
from secure_fcit.data.render import ICON_COLORS, ICONS, PALETTE, SHAPES, STRONG_COLORS
from secure_fcit.data.spec import METRICS
from secure_fcit.data.tasks_figures import CHART_TEMPLATES, FIGURE_TEMPLATES, OCR_WORDS, TABLE_ITEMS
from secure_fcit.data.tasks_objects import ATTRIBUTE_SHAPES, ATTRIBUTE_SIZES, COUNTING_TEMPLATES
from secure_fcit.errors import ConfigError, DataError
from tests.unit.data._support import cell_objects, cell_window, color_mask, match_template, rows_with

N = 160  # examples per task for the distribution checks; the whole file stays within a few seconds

EXPECTED = {
    "classification": ("ImageNet-R", "exact"),
    "figure_mcq": ("ArxivQA", "option"),
    "icon_qa": ("IconQA", "exact"),
    "counting_math": ("CLEVR-Math", "exact"),
    "ocr": ("OCR-VQA", "exact"),
    "captions": ("Flickr30k", "caption"),
    "chart_yesno": ("FigureQA", "exact"),
    "attribute_qa": ("super-CLEVR", "exact"),
    "grounding": ("RefCOCO", "iou"),
    "table_math": ("TabMWP", "exact"),
}


@cache
def samples(name: str, n: int = N, seed: int = 7) -> tuple[Example, ...]:
    rng = np.random.default_rng(seed)
    return tuple(TASKS[name].generate(rng, 64) for _ in range(n))


def test_registry_holds_exactly_the_ten_tasks() -> None:
    assert TASK_NAMES == tuple(EXPECTED)
    for name, (mirrors, metric) in EXPECTED.items():
        spec = get_task(name)
        assert (spec.name, spec.mirrors, spec.metric) == (name, mirrors, metric)
        assert spec.metric in METRICS


def test_unknown_task_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="unknown task 'nope'.*classification.*table_math"):
        get_task("nope")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_examples_are_valid_and_use_at_least_five_templates(name: str) -> None:
    spec = TASKS[name]
    assert len(set(spec.templates)) >= 5
    used = Counter()
    for example in samples(name):
        assert example.image.mode == "RGB" and example.image.size == (64, 64)
        assert example.instruction.strip() and example.answer.strip()
        assert "<image>" not in example.instruction
        assert (example.bbox is not None) == (name == "grounding")
        used[match_template(spec.templates, example.instruction)[0]] += 1
        if spec.metric != "caption":
            assert 1 <= len(example.answer.split()) <= 3 or name == "grounding"
    assert len(used) >= 5


@pytest.mark.parametrize("name", [n for n in TASK_NAMES if TASKS[n].metric == "exact" and n != "chart_yesno"])
def test_instruction_never_gives_the_answer_away(name: str) -> None:
    for example in samples(name):
        assert not re.search(rf"\b{re.escape(example.answer)}\b", example.instruction), example


@pytest.mark.parametrize("name", TASK_NAMES)
def test_same_seed_same_example_and_different_seeds_differ(name: str) -> None:
    def run(seed: int) -> list[tuple[bytes, str, str]]:
        rng = task_rng(seed, name, 0)
        out = []
        for _ in range(4):
            example = TASKS[name].generate(rng, 64)
            out.append((example.image.tobytes(), example.instruction, example.answer))
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_image_size_is_honoured(name: str) -> None:
    example = TASKS[name].generate(np.random.default_rng(0), 96)
    assert example.image.size == (96, 96)


def test_classification_answers_are_shape_names() -> None:
    answers = Counter(e.answer for e in samples("classification"))
    assert set(answers) == set(SHAPES)
    for example in samples("classification")[:40]:
        assert any(color_mask(example.image, c).sum() > 20 for c in STRONG_COLORS)


def test_figure_mcq_answer_is_the_extreme_panel_and_spread_over_letters() -> None:
    letters = Counter()
    for example in samples("figure_mcq", 400):
        assert "A, B, C or D" in example.instruction
        letters[example.answer] += 1
        ink = np.zeros((64, 64), dtype=bool)
        for color in STRONG_COLORS:
            ink |= color_mask(example.image, color)
        heights = [
            rows_with(ink[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32]) for r in (0, 1) for c in (0, 1)
        ]
        pick = np.argmax if example.instruction in FIGURE_TEMPLATES["tallest"] else np.argmin
        assert "ABCD"[int(pick(heights))] == example.answer
    assert set(letters) == set("ABCD")
    assert all(60 <= count <= 140 for count in letters.values()), letters


def test_icon_qa_answer_is_the_icon_in_the_framed_cell() -> None:
    answers = Counter()
    cells = [cell_window(64, 3, r, c) for r in range(3) for c in range(3)]
    for example in samples("icon_qa"):
        black = np.all(np.asarray(example.image) == 0, axis=-1)
        framed = max(cells, key=lambda window: black[window].sum())
        assert color_mask(example.image, ICON_COLORS[example.answer])[framed].sum() > 10
        answers[example.answer] += 1
    assert set(answers) == set(ICONS)


def test_counting_math_answers_follow_the_objects_drawn() -> None:
    for example in samples("counting_math"):
        objects = [
            (color, "square" if ratio > 0.9 else "circle")
            for color, ratio in cell_objects(example.image, 4).values()
        ]
        assert 1 <= len(objects) <= 6
        template, slots = match_template(
            tuple(t for ts in COUNTING_TEMPLATES.values() for t in ts), example.instruction
        )
        kind = next(k for k, ts in COUNTING_TEMPLATES.items() if template in ts)
        color, shape = slots.get("color"), slots.get("shape")
        expected = {
            "sub_color": sum(c != color for c, _ in objects),
            "sub_shape": sum(s != shape for _, s in objects),
            "sub_both": sum(o != (color, shape) for o in objects),
            "add": sum(o == (color, shape) for o in objects) + 1,
            "count_color": sum(c == color for c, _ in objects),
        }[kind]
        assert example.answer == str(expected), (example.instruction, objects)


def test_ocr_answers_are_known_lowercase_words() -> None:
    answers = Counter(e.answer for e in samples("ocr"))
    assert set(answers) == set(OCR_WORDS)
    assert all(3 <= len(w) <= 5 and w.islower() for w in OCR_WORDS) and len(OCR_WORDS) >= 12


def test_captions_describe_the_objects_drawn() -> None:
    single = re.compile(r"a (\w+) (\w+) (?:at the|on the|in the) [a-z ]+\Z")
    pair = re.compile(r"a (\w+) (\w+) (to the left of|above) a (\w+) (\w+)\Z")
    counts = Counter()
    for example in samples("captions"):
        objects = cell_objects(example.image, 3)
        colors = sorted(color for color, _ in objects.values())
        if found := single.match(example.answer):
            counts["one"] += 1
            assert colors == [found.group(1)]
        else:
            found = pair.match(example.answer)
            assert found, example.answer
            counts["two"] += 1
            assert colors == sorted([found.group(1), found.group(4)])
            (r1, c1), (r2, c2) = sorted(objects, key=lambda rc: (rc[1], rc[0]))
            assert (found.group(3) == "above") == (c1 == c2)
    assert counts["one"] > 40 and counts["two"] > 40


def test_chart_yesno_is_balanced_and_consistent_with_bar_heights() -> None:
    answers = Counter()
    for example in samples("chart_yesno", 400):
        asked = re.search(r"the (\w+) bar", example.instruction).group(1)
        heights = {c: rows_with(color_mask(example.image, c)) for c in STRONG_COLORS}
        drawn = {c: h for c, h in heights.items() if h}
        assert len(drawn) == 3 and asked in drawn
        template, _ = match_template(TASKS["chart_yesno"].templates, example.instruction)
        tallest = template in CHART_TEMPLATES["tallest"]
        extreme = max(drawn, key=drawn.get) if tallest else min(drawn, key=drawn.get)
        assert example.answer == ("yes" if asked == extreme else "no")
        answers[example.answer] += 1
    assert 0.4 <= answers["yes"] / 400 <= 0.6


def test_attribute_qa_answers_match_the_asked_object() -> None:
    kinds = Counter()
    for example in samples("attribute_qa"):
        _, slots = match_template(TASKS["attribute_qa"].templates, example.instruction)
        if "color" in slots:  # asked about the object of that color
            mask = color_mask(example.image, slots["color"])
            ys, xs = np.nonzero(mask)
            side = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
            if example.answer in ATTRIBUTE_SIZES:
                kinds["size"] += 1
                assert (side > 32 * 0.6) == (example.answer == "large")
            else:
                kinds["shape"] += 1
                assert example.answer in ATTRIBUTE_SHAPES and example.answer != slots.get("shape")
        else:
            kinds["color"] += 1
            assert example.answer in STRONG_COLORS
            assert color_mask(example.image, example.answer).sum() > 20
    assert min(kinds.values()) > 20, kinds


def test_grounding_boxes_are_cells_holding_the_object() -> None:
    for example in samples("grounding"):
        x1, y1, x2, y2 = example.bbox
        for v in example.bbox:
            assert 0.0 <= v <= 1.0 and (v * 4) == round(v * 4)
        assert (x2 - x1, y2 - y1) == (0.25, 0.25)
        assert example.answer == f"[{x1:.2f}, {y1:.2f}, {x2:.2f}, {y2:.2f}]"
        _, slots = match_template(TASKS["grounding"].templates, example.instruction)
        mask = color_mask(example.image, slots["color"])
        assert mask[round(y1 * 64) : round(y2 * 64), round(x1 * 64) : round(x2 * 64)].sum() > 30


def test_table_math_answers_are_counts_or_totals() -> None:
    for example in samples("table_math"):
        value = int(example.answer)
        _, slots = match_template(TASKS["table_math"].templates, example.instruction)
        if "item" in slots:
            assert slots["item"] in TABLE_ITEMS and 1 <= value <= 9
        else:
            assert 3 <= value <= 27


def test_corpus_text_is_deterministic_and_covers_every_task() -> None:
    corpus = corpus_text(seed=1, n_per_task=20)
    assert len(corpus) == 2 * 20 * len(TASK_NAMES)
    assert corpus == corpus_text(seed=1, n_per_task=20)
    assert corpus != corpus_text(seed=2, n_per_task=20)
    assert {"A", "yes"} & set(corpus) and any(text.startswith("[") for text in corpus)


def test_example_and_spec_validate_themselves() -> None:
    image = samples("ocr")[0].image
    with pytest.raises(DataError, match="empty answer"):
        Example(image, "What?", " ")
    with pytest.raises(DataError, match="bbox"):
        Example(image, "Where?", "x", (0.0, 0.0, 1.5, 1.0))
    with pytest.raises(ConfigError, match="templates"):
        TaskSpec("t", "none", "exact", ("a", "b"), TASKS["ocr"].generate)
    with pytest.raises(ConfigError, match="metric"):
        TaskSpec("t", "none", "bleu", tuple("abcde"), TASKS["ocr"].generate)
    assert PALETTE["red"] != PALETTE["orange"]
