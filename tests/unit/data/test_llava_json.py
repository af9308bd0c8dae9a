"""LLaVA-format files: the synthetic writer round-trips, and every malformed record is refused by name."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from secure_fcit.data import (
    TASKS,
    build_benchmark,
    load_image,
    load_test,
    load_train,
    task_rng,
    write_task_split,
)
from secure_fcit.data.llava_json import find_test_file
from secure_fcit.errors import ConfigError, DataError

# --- the synthetic writer --------------------------------------------------------------------------


def _tree(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def test_round_trip_matches_the_generator(tmp_path: Path) -> None:
    files = write_task_split(tmp_path, "grounding", n_train=5, n_test=3, seed=11)
    assert not files.reused and files.directory == tmp_path / "grounding"
    train, test = load_train(files.train), load_test(files.test)
    assert [r.id for r in train] == [f"grounding-train-{i:05d}" for i in range(5)]
    for i, record in enumerate(train):
        example = TASKS["grounding"].generate(task_rng(11, "grounding", 0, i), 64)
        assert record.turns == ((example.instruction, example.answer),)
        assert record.image.parent == files.images and record.image.is_file()
        assert load_image(record.image).tobytes() == example.image.tobytes()
    for i, record in enumerate(test):
        example = TASKS["grounding"].generate(task_rng(11, "grounding", 1, i), 64)
        assert (record.text, record.answer, record.answer_bbox) == (
            example.instruction,
            example.answer,
            example.bbox,
        )
    raw = json.loads(files.train.read_text())
    assert raw[0]["conversations"][0]["value"].startswith("<image>\n")
    assert raw[0]["image"] == "images/train_00000.png"
    first_test = json.loads(files.test.read_text().splitlines()[0])
    assert set(first_test) == {"question_id", "image", "text", "answer", "answer_bbox"}
    manifest = json.loads(files.manifest.read_text())
    assert {k: manifest[k] for k in ("task", "seed", "n_train", "n_test", "image_size")} == {
        "task": "grounding",
        "seed": 11,
        "n_train": 5,
        "n_test": 3,
        "image_size": 64,
    }
    assert "generator_version" in manifest


def test_non_grounding_tests_carry_no_box(tmp_path: Path) -> None:
    files = write_task_split(tmp_path, "ocr", n_train=2, n_test=2, seed=0, image_size=48)
    assert all(r.answer_bbox is None for r in load_test(files.test))
    assert "answer_bbox" not in files.test.read_text()
    assert load_image(load_train(files.train)[0].image).size == (48, 48)


def test_same_seed_byte_identical_and_train_test_disjoint(tmp_path: Path) -> None:
    a = write_task_split(tmp_path / "a", "icon_qa", n_train=4, n_test=4, seed=5)
    b = write_task_split(tmp_path / "b", "icon_qa", n_train=4, n_test=4, seed=5)
    c = write_task_split(tmp_path / "c", "icon_qa", n_train=4, n_test=4, seed=6)
    assert _tree(a.directory) == _tree(b.directory)
    assert _tree(a.directory) != _tree(c.directory)
    train_pixels = {load_image(r.image).tobytes() for r in load_train(a.train)}
    assert not train_pixels & {load_image(r.image).tobytes() for r in load_test(a.test)}


def test_matching_split_is_reused_and_a_changed_one_rebuilt(tmp_path: Path) -> None:
    first = write_task_split(tmp_path, "ocr", n_train=6, n_test=2, seed=1)
    stamp = first.train.stat().st_mtime_ns
    again = write_task_split(tmp_path, "ocr", n_train=6, n_test=2, seed=1)
    assert again.reused and again == first and again.train.stat().st_mtime_ns == stamp
    smaller = write_task_split(tmp_path, "ocr", n_train=3, n_test=2, seed=1)
    assert not smaller.reused and len(load_train(smaller.train)) == 3
    assert len(list(smaller.images.glob("*.png"))) == 5  # the old split's extra images are gone
    smaller.train.write_text("[]")  # tampered with: the hash no longer matches
    rebuilt = write_task_split(tmp_path, "ocr", n_train=3, n_test=2, seed=1)
    assert not rebuilt.reused and len(load_train(rebuilt.train)) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ocr"]  # no staging folders left behind


def test_writer_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown task"):
        write_task_split(tmp_path, "imagenet", 1, 1, 0)
    with pytest.raises(ConfigError, match="n_train"):
        write_task_split(tmp_path, "ocr", -1, 1, 0)
    with pytest.raises(ConfigError, match="seed"):
        write_task_split(tmp_path, "ocr", 1, 1, -3)


def test_build_benchmark_writes_every_task(tmp_path: Path) -> None:
    out = build_benchmark(
        tmp_path, ["ocr", "captions", "ocr"], {"ocr": 2, "captions": 3}, 1, seed=0, progress=False
    )
    assert list(out) == ["ocr", "captions"]
    assert [out[name].n_train for name in out] == [2, 3]
    assert all(out[name].reused for name in out) is False
    again = build_benchmark(
        tmp_path, ["ocr", "captions"], {"ocr": 2, "captions": 3}, 1, seed=0, progress=False
    )
    assert all(files.reused for files in again.values())
    with pytest.raises(ConfigError, match="no entry for task 'captions'"):
        build_benchmark(tmp_path, ["captions"], {"ocr": 2}, 1, seed=0, progress=False)


# --- the loaders on hand-written files ------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "img.png")
    return tmp_path


def _record(rid: Any = "r0", image: Any = "img.png", turns: Any = None) -> dict[str, Any]:
    if turns is None:
        turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "a cat"}]
    return {"id": rid, "image": image, "conversations": turns}


def _write(folder: Path, data: Any, name: str = "train.json") -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_load_train_strips_the_image_token_and_keeps_absolute_paths(folder: Path) -> None:
    turns = [
        {"from": "human", "value": "Describe it.\n<image>"},
        {"from": "gpt", "value": " a cat "},
        {"from": "human", "value": "And the color?"},
        {"from": "gpt", "value": "red"},
    ]
    path = _write(folder, [_record(7, str(folder / "img.png"), turns), _record("b")])
    first, second = load_train(path)
    assert first.id == "7" and first.image == folder / "img.png"
    assert first.turns == (("Describe it.", "a cat"), ("And the color?", "red"))
    assert second.turns == (("What is it?", "a cat"),)
    assert load_train(_write(folder, "[]")) == []


def _bad_train_cases() -> list[tuple[str, Any, str]]:
    human = {"from": "human", "value": "<image>\nQ?"}
    gpt = {"from": "gpt", "value": "A"}
    return [
        ("top level", {"id": "x"}, r"top level must be a JSON array"),
        ("not an object", ["text"], r"record 0: must be a JSON object"),
        ("missing id", [{"image": "img.png", "conversations": [human, gpt]}], r"record 0: missing key 'id'"),
        ("bad id type", [_record(rid=["x"])], r"record 0: 'id' must be"),
        (
            "missing image",
            [{"id": "r0", "conversations": [human, gpt]}],
            r"record 0 \(id 'r0'\): missing key 'image'",
        ),
        ("image type", [_record(image=3)], r"record 0 \(id 'r0'\): 'image' must be a string"),
        (
            "image missing",
            [_record(image="nope.png")],
            r"record 0 \(id 'r0'\): image file .*nope\.png does not exist",
        ),
        ("no conversations", [{"id": "r0", "image": "img.png"}], r"missing key 'conversations'"),
        ("empty conversations", [_record(turns=[])], r"'conversations' must be a non-empty list"),
        ("turn type", [_record(turns=[human, {"from": "gpt", "value": 3}])], r"turn 1 must be an object"),
        ("starts with gpt", [_record(turns=[gpt, human])], r"turn 0 is from 'gpt', expected 'human'"),
        (
            "not alternating",
            [_record(turns=[human, {"from": "human", "value": "x"}])],
            r"turn 1 is from 'human'",
        ),
        (
            "no answer",
            [_record(turns=[human, gpt, {"from": "human", "value": "more?"}])],
            r"turn 2\) has no gpt",
        ),
        ("no image token", [_record(turns=[{"from": "human", "value": "Q?"}, gpt])], r"has 0 <image> tokens"),
        (
            "two image tokens",
            [_record(turns=[{"from": "human", "value": "<image><image>Q?"}, gpt])],
            r"has 2 <image> tokens",
        ),
        (
            "image token later",
            [_record(turns=[human, gpt, {"from": "human", "value": "<image> again"}, gpt])],
            r"turn 2 contains <image>",
        ),
        (
            "empty instruction",
            [_record(turns=[{"from": "human", "value": "<image>\n  "}, gpt])],
            r"empty instruction",
        ),
        (
            "empty answer",
            [_record(turns=[human, {"from": "gpt", "value": " "}])],
            r"turn 1 has an empty answer",
        ),
        (
            "duplicate id",
            [_record("a"), _record("b"), _record("a")],
            r"record 2 \(id 'a'\): duplicate id.*record 0",
        ),
    ]


@pytest.mark.parametrize(
    ("case", "data", "message"), _bad_train_cases(), ids=[c[0] for c in _bad_train_cases()]
)
def test_load_train_refuses_bad_records(folder: Path, case: str, data: Any, message: str) -> None:
    path = _write(folder, data)
    with pytest.raises(DataError) as caught:
        load_train(path)
    assert str(caught.value).startswith(f"{path}:"), case
    assert re.search(message, str(caught.value)), str(caught.value)


def test_load_train_reports_malformed_json_position(folder: Path) -> None:
    path = _write(folder, '[\n  {"id": "a",\n   "image": }\n]')
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: malformed JSON at line 3, column 13"):
        load_train(path)
    with pytest.raises(DataError, match="cannot read the file"):
        load_train(folder / "absent.json")


def _test_line(qid: Any = "q0", **extra: Any) -> dict[str, Any]:
    return {"question_id": qid, "image": "img.png", "text": "What is it?", "answer": "a cat", **extra}


def test_load_test_reads_jsonl_and_json_arrays(folder: Path) -> None:
    lines = [_test_line(), _test_line("q1", answer_bbox=[0, 0.25, 0.5, 1]), _test_line(2, answer_bbox=None)]
    jsonl = _write(folder, "\n".join(json.dumps(x) for x in lines) + "\n\n", "test.jsonl")
    array = _write(folder, json.dumps(lines, indent=2), "test.json")
    for path in (jsonl, array):
        records = load_test(path)
        assert [r.question_id for r in records] == ["q0", "q1", "2"]
        assert records[1].answer_bbox == (0.0, 0.25, 0.5, 1.0) and records[0].answer_bbox is None
        assert records[0].image == folder / "img.png" and records[0].text == "What is it?"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"question_id": "q0"', None], r"malformed JSON at line 1, column"),
        ([None, None, "{bad json"], r"malformed JSON at line 3, column 2"),
        ([None, "[1, 2]"], r"record 1 \(line 2\): must be a JSON object"),
        (
            [{"image": "img.png", "text": "t", "answer": "a"}],
            r"record 0 \(line 1\): missing key 'question_id'",
        ),
        (
            [{"question_id": "q", "image": "img.png", "text": "t"}],
            r"record 0 \(line 1\) \(id 'q'\): missing key 'answer'",
        ),
        ([_test_line(answer=4)], r"'answer' must be a string"),
        ([_test_line(text="<image>\nWhat?")], r"'text' contains <image>"),
        ([_test_line(text="  ")], r"empty text"),
        ([_test_line(answer="")], r"empty answer"),
        ([_test_line(image="gone.png")], r"image file .*gone\.png does not exist"),
        ([_test_line(answer_bbox=[0, 1])], r"'answer_bbox' must be a list of 4 finite numbers"),
        (
            [_test_line(), _test_line("q1"), _test_line()],
            r"record 2 \(line 3\) \(id 'q0'\): duplicate question_id",
        ),
    ],
)
def test_load_test_refuses_bad_records(folder: Path, lines: list[Any], message: str) -> None:
    text = "\n".join(
        json.dumps(_test_line(f"ok{i}")) if x is None else x if isinstance(x, str) else json.dumps(x)
        for i, x in enumerate(lines)
    )
    path = _write(folder, text, "test.jsonl")
    with pytest.raises(DataError) as caught:
        load_test(path)
    assert str(caught.value).startswith(f"{path}:")
    assert re.search(message, str(caught.value)), str(caught.value)


def test_load_test_names_the_record_of_a_json_array(folder: Path) -> None:
    path = _write(folder, json.dumps([_test_line(), _test_line("q1", text=3)]), "test.json")
    with pytest.raises(
        DataError, match=rf"{re.escape(str(path))}: record 1 \(id 'q1'\): 'text' must be a string"
    ):
        load_test(path)


def test_load_image_refuses_unreadable_files(folder: Path) -> None:
    assert load_image(folder / "img.png").getpixel((0, 0)) == (1, 2, 3)
    gray = folder / "gray.png"
    Image.new("L", (4, 4), 9).save(gray)
    assert load_image(gray).mode == "RGB"
    (folder / "text.png").write_text("not a png")
    with pytest.raises(DataError, match=r"text\.png: cannot read the image"):
        load_image(folder / "text.png")
    with pytest.raises(DataError, match=r"missing\.png: cannot read the image"):
        load_image(folder / "missing.png")


def test_images_resolve_next_to_the_json_and_in_its_images_folder(folder: Path) -> None:
    # LLaVA-style datasets write "image": "0001.png" and keep the file in images/0001.png
    (folder / "images").mkdir()
    Image.new("RGB", (8, 8), (4, 5, 6)).save(folder / "images" / "0001.png")
    first, second = load_train(_write(folder, [_record("a", "img.png"), _record("b", "0001.png")]))
    assert first.image == folder / "img.png" and second.image == folder / "images" / "0001.png"
    with pytest.raises(DataError, match=r"image file .*missing\.png or .*images/missing\.png does not exist"):
        load_train(_write(folder, [_record("c", "missing.png")]))


def test_a_task_folder_holds_test_jsonl_or_test_json_but_not_both(folder: Path) -> None:
    with pytest.raises(DataError, match="no test.jsonl or test.json"):
        find_test_file(folder)
    _write(folder, json.dumps([_test_line()]), "test.json")
    assert find_test_file(folder) == folder / "test.json"
    assert [r.question_id for r in load_test(find_test_file(folder))] == ["q0"]
    _write(folder, json.dumps(_test_line()), "test.jsonl")
    with pytest.raises(DataError, match="both test.jsonl and test.json"):
        find_test_file(folder)
