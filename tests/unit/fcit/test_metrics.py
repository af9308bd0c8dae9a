from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secure_fcit.errors import ConfigError
from secure_fcit.fcit import metrics as M


def test_exact_is_case_and_period_insensitive():
    assert M.score_exact(" Triangle. ", "triangle") == 100.0
    assert M.score_exact("triangles", "triangle") == 0.0


def test_option_letter_is_extracted():
    assert M.score_option("B", "B") == 100.0
    assert M.score_option("The answer is C.", "C") == 100.0
    assert M.score_option("a", "A") == 0.0  # lowercase article is not an option letter
    with pytest.raises(ConfigError, match="no letter"):
        M.score_option("A", "yes")


def test_iou_threshold():
    truth = (0.25, 0.25, 0.5, 0.5)
    assert M.score_iou("[0.25, 0.25, 0.50, 0.50]", "", truth) == 100.0
    # IoU exactly 1/3 < 0.5
    assert M.score_iou("[0.25, 0.25, 0.75, 0.50]", "", truth) == 0.0
    assert M.score_iou("no box here", "", truth) == 0.0
    assert M.box_iou((0, 0, 1, 1), (0.5, 0, 1.5, 1)) == pytest.approx(1 / 3)


def test_caption_rouge():
    assert M.score_caption("a red circle on the left", "a red circle on the left") == pytest.approx(100.0)
    assert 0 < M.score_caption("a red circle", "a red circle on the left") < 100
    assert M.score_caption("", "a red circle") == 0.0


def test_unknown_metric():
    with pytest.raises(ConfigError, match="unknown metric 'bleu'"):
        M.score_prediction("bleu", "a", "a")


def test_matrix_metrics_by_hand():
    a = [[80.0, None, None], [40.0, 90.0, None], [20.0, 60.0, 70.0]]
    assert M.last(a) == pytest.approx(50.0)
    assert M.average(a) == pytest.approx((80 + 65 + 50) / 3)
    # forgetting: task0 max(80,40)-20 = 60, task1 90-60 = 30 → 45
    assert M.forgetting(a) == pytest.approx(45.0)
    # bwt: (20-80 + 60-90)/2 = -45
    assert M.backward_transfer(a) == pytest.approx(-45.0)


def test_missing_entry_is_named():
    with pytest.raises(ConfigError, match=r"A\[1\]\[1\]"):
        M.last([[1.0], [1.0, None]])


@given(st.lists(st.floats(0, 100), min_size=1, max_size=6))
def test_no_forgetting_when_scores_never_drop(vals):
    t = len(vals)
    a = [[vals[i] if i <= r else None for i in range(t)] for r in range(t)]
    assert M.forgetting(a) == pytest.approx(0.0, abs=1e-9)
    assert M.backward_transfer(a) == pytest.approx(0.0, abs=1e-9)
    assert M.last(a) == pytest.approx(sum(vals) / t)


def test_matrix_report(tmp_path):
    from secure_fcit.fcit.report import matrix_markdown, plot_matrix

    a = [[80.0, None], [40.0, 90.0]]
    md = matrix_markdown(a, ["ocr", "captions"])
    assert "| 1 | 80.0 | – |" in md and "| 2 | 40.0 | 90.0 |" in md
    png = plot_matrix(a, ["ocr", "captions"], tmp_path / "m.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
