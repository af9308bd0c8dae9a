"""LLaVA-format datasets on disk: one loader for synthetic and real data, and the synthetic writer.

Train files are a JSON array of ``{"id", "image", "conversations": [{"from": "human", "value":
"<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}``; test files are JSON lines (or a JSON
array) of ``{"question_id", "image", "text", "answer"}`` plus ``"answer_bbox"`` for boxes. Image
paths are relative to the JSON file's folder (or its ``images/`` sub-folder) unless absolute. The loaders refuse a bad record with
a DataError naming the file and the record; they never drop one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from secure_fcit.data.tasks import DEFAULT_IMAGE_SIZE, GENERATOR_VERSION, get_task, task_rng
from secure_fcit.errors import ConfigError, DataError

__all__ = [
    "IMAGE_TOKEN",
    "TrainRecord",
    "TestRecord",
    "TaskFiles",
    "load_train",
    "load_test",
    "find_test_file",
    "load_image",
    "write_task_split",
    "build_benchmark",
]

IMAGE_TOKEN = "<image>"
_TRAIN_STREAM, _TEST_STREAM = 0, 1  # task_rng streams: train and test never share a seed


@dataclass(frozen=True)
class TrainRecord:
    """One training conversation: ``turns`` are (instruction, answer) pairs, ``<image>`` removed."""

    id: str
    image: Path
    turns: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TestRecord:
    """One evaluation question; ``answer_bbox`` is the reference box of grounding questions."""

    question_id: str
    image: Path
    text: str
    answer: str
    answer_bbox: tuple[float, ...] | None = None


@dataclass(frozen=True)
class TaskFiles:
    """Where one task's split lives (``directory`` = ``root/<task>``) and what it holds."""

    task: str
    directory: Path
    train: Path
    test: Path
    images: Path
    manifest: Path
    n_train: int
    n_test: int
    seed: int
    image_size: int
    reused: bool = field(default=False, compare=False)


# --- reading ---------------------------------------------------------------------------------------


def _where(path: Path, index: int, record_id: object = None, line: int | None = None) -> str:
    at = f"{path}: record {index}"
    if line is not None:
        at += f" (line {line})"
    if record_id is not None:
        at += f" (id {record_id!r})"
    return at


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the file: {exc}") from None


def _parse(path: Path, text: str, line: int | None = None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        lineno = exc.lineno if line is None else line
        raise DataError(f"{path}: malformed JSON at line {lineno}, column {exc.colno}: {exc.msg}") from None


def _record_id(raw: dict[str, Any], key: str, where: str) -> str:
    if key not in raw:
        raise DataError(f"{where}: missing key {key!r}")
    value = raw[key]
    # Real LLaVA files sometimes number their records; numbers are accepted and kept as text.
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise DataError(f"{where}: {key!r} must be a non-empty string or an integer, got {value!r}")
    return str(value)


def _string(raw: dict[str, Any], key: str, where: str) -> str:
    if key not in raw:
        raise DataError(f"{where}: missing key {key!r}")
    if not isinstance(raw[key], str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(raw[key]).__name__}")
    return raw[key]


def _image_path(base: Path, raw: dict[str, Any], where: str) -> Path:
    """An absolute path as given; a relative one against the JSON's folder, then its ``images/``
    sub-folder (LLaVA-style datasets keep ``"image": "0001.png"`` next to ``images/0001.png``)."""
    relative = _string(raw, "image", where)
    if relative and Path(relative).is_absolute():
        candidates = [Path(relative)]
    else:
        candidates = [base / relative, base / "images" / relative]
    for image in candidates if relative else ():
        if image.is_file():
            return image
    tried = " or ".join(str(c) for c in candidates)
    raise DataError(f"{where}: image file {tried} does not exist")


def _strip_image_token(value: str) -> str:
    return (
        value.replace(IMAGE_TOKEN + "\n", "").replace("\n" + IMAGE_TOKEN, "").replace(IMAGE_TOKEN, "").strip()
    )


def _turns(raw: dict[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    conversations = raw.get("conversations")
    if "conversations" not in raw:
        raise DataError(f"{where}: missing key 'conversations'")
    if not isinstance(conversations, list) or not conversations:
        raise DataError(f"{where}: 'conversations' must be a non-empty list of turns")
    values = []
    for k, turn in enumerate(conversations):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("from"), str)
            or not isinstance(turn.get("value"), str)
        ):
            raise DataError(f"{where}: turn {k} must be an object with string 'from' and 'value'")
        expected = "human" if k % 2 == 0 else "gpt"
        if turn["from"] != expected:
            raise DataError(
                f"{where}: turn {k} is from {turn['from']!r}, expected {expected!r} "
                "(conversations start with 'human' and alternate human/gpt)"
            )
        count = turn["value"].count(IMAGE_TOKEN)
        if k == 0 and count != 1:
            raise DataError(
                f"{where}: the first human turn has {count} {IMAGE_TOKEN} tokens, expected exactly 1"
            )
        if k > 0 and count:
            raise DataError(f"{where}: turn {k} contains {IMAGE_TOKEN}; only the first human turn may")
        values.append(_strip_image_token(turn["value"]) if k == 0 else turn["value"].strip())
        if not values[-1]:
            raise DataError(
                f"{where}: turn {k} has an empty {'instruction' if expected == 'human' else 'answer'}"
            )
    if len(values) % 2:
        raise DataError(f"{where}: the last human turn (turn {len(values) - 1}) has no gpt answer")
    return tuple(zip(values[0::2], values[1::2], strict=True))


def load_train(path: str | os.PathLike[str]) -> list[TrainRecord]:
    """Every record of a LLaVA train JSON array, validated; DataError on the first bad one."""
    path = Path(path)
    data = _parse(path, _read_text(path))
    if not isinstance(data, list):
        raise DataError(f"{path}: the top level must be a JSON array of records, got {type(data).__name__}")
    seen: dict[str, int] = {}
    records = []
    for index, raw in enumerate(data):
        if not isinstance(raw, dict):
            raise DataError(f"{_where(path, index)}: must be a JSON object, got {type(raw).__name__}")
        record_id = _record_id(raw, "id", _where(path, index))
        where = _where(path, index, record_id)
        if record_id in seen:
            raise DataError(f"{where}: duplicate id, already used by record {seen[record_id]}")
        seen[record_id] = index
        image = _image_path(path.parent, raw, where)
        records.append(TrainRecord(record_id, image, _turns(raw, where)))
    return records


def _bbox(raw: dict[str, Any], where: str) -> tuple[float, ...] | None:
    value = raw.get("answer_bbox")
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise DataError(f"{where}: 'answer_bbox' must be a list of 4 finite numbers, got {value!r}")
    return tuple(float(v) for v in value)


def find_test_file(directory: str | os.PathLike[str]) -> Path:
    """A task folder's test file: ``test.jsonl`` (JSON lines) or ``test.json`` (a JSON array);
    DataError when neither or both are there (two test sets would be ambiguous)."""
    directory = Path(directory)
    found = [directory / name for name in ("test.jsonl", "test.json") if (directory / name).is_file()]
    if len(found) != 1:
        what = "both test.jsonl and test.json (keep one)" if found else "no test.jsonl or test.json"
        raise DataError(f"{directory}: {what}")
    return found[0]


def load_test(path: str | os.PathLike[str]) -> list[TestRecord]:
    """Every question of a LLaVA test file (JSON lines, or one JSON array), validated."""
    path = Path(path)
    text = _read_text(path)
    if text.lstrip().startswith("["):
        data = _parse(path, text)
        items: Iterable[tuple[Any, int | None]] = ((raw, None) for raw in data)
    else:
        lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
        items = ((_parse(path, line, n), n) for n, line in lines)
    seen: dict[str, int] = {}
    records = []
    for index, (raw, line) in enumerate(items):
        if not isinstance(raw, dict):
            raise DataError(
                f"{_where(path, index, line=line)}: must be a JSON object, got {type(raw).__name__}"
            )
        question_id = _record_id(raw, "question_id", _where(path, index, line=line))
        where = _where(path, index, question_id, line)
        if question_id in seen:
            raise DataError(f"{where}: duplicate question_id, already used by record {seen[question_id]}")
        seen[question_id] = index
        image = _image_path(path.parent, raw, where)
        question = _string(raw, "text", where).strip()
        if IMAGE_TOKEN in question:
            raise DataError(f"{where}: 'text' contains {IMAGE_TOKEN}; test questions are given without it")
        answer = _string(raw, "answer", where).strip()
        if not question or not answer:
            raise DataError(f"{where}: empty {'text' if not question else 'answer'}")
        records.append(TestRecord(question_id, image, question, answer, _bbox(raw, where)))
    return records


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """The image at ``path`` as RGB; DataError if it is missing or not a readable image."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read the image: {exc}") from None


# --- writing the synthetic benchmark ---------------------------------------------------------------


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(root: Path, task: str, manifest: Mapping[str, Any], reused: bool) -> TaskFiles:
    directory = root / task
    return TaskFiles(
        task=task,
        directory=directory,
        train=directory / "train.json",
        test=directory / "test.jsonl",
        images=directory / "images",
        manifest=directory / "manifest.json",
        n_train=manifest["n_train"],
        n_test=manifest["n_test"],
        seed=manifest["seed"],
        image_size=manifest["image_size"],
        reused=reused,
    )


def _existing_matches(files: TaskFiles, wanted: Mapping[str, Any]) -> bool:
    """True if the split on disk was written with ``wanted`` and is complete and unmodified."""
    try:
        found = json.loads(files.manifest.read_text(encoding="utf-8"))
        if not isinstance(found, dict) or {k: found.get(k) for k in wanted} != dict(wanted):
            return False
        hashes = found.get("sha256", {})
        if hashes.get("train.json") != _sha256(files.train) or hashes.get("test.jsonl") != _sha256(
            files.test
        ):
            return False
        return sum(1 for _ in files.images.glob("*.png")) == files.n_train + files.n_test
    except (OSError, ValueError, AttributeError):
        return False


def _write_split(directory: Path, task: str, wanted: Mapping[str, Any]) -> None:
    spec = get_task(task)
    (directory / "images").mkdir()
    train, test = [], []
    for split, stream, count in (
        ("train", _TRAIN_STREAM, wanted["n_train"]),
        ("test", _TEST_STREAM, wanted["n_test"]),
    ):
        for i in range(count):
            example = spec.generate(task_rng(wanted["seed"], task, stream, i), wanted["image_size"])
            image = f"images/{split}_{i:05d}.png"
            example.image.save(directory / image, format="PNG")
            if split == "train":
                conversation = [
                    {"from": "human", "value": f"{IMAGE_TOKEN}\n{example.instruction}"},
                    {"from": "gpt", "value": example.answer},
                ]
                train.append({"id": f"{task}-train-{i:05d}", "image": image, "conversations": conversation})
            else:
                record: dict[str, Any] = {
                    "question_id": f"{task}-test-{i:05d}",
                    "image": image,
                    "text": example.instruction,
                    "answer": example.answer,
                }
                if example.bbox is not None:
                    record["answer_bbox"] = [round(v, 4) for v in example.bbox]
                test.append(record)
    rows = ",\n".join(json.dumps(r, ensure_ascii=False) for r in train)
    (directory / "train.json").write_text(f"[\n{rows}\n]\n" if train else "[]\n", encoding="utf-8")
    (directory / "test.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in test), "utf-8"
    )
    manifest = {
        **wanted,
        "sha256": {
            "train.json": _sha256(directory / "train.json"),
            "test.jsonl": _sha256(directory / "test.jsonl"),
        },
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", "utf-8")


def write_task_split(
    root: str | os.PathLike[str],
    task: str,
    n_train: int,
    n_test: int,
    seed: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> TaskFiles:
    """Write (or reuse) ``root/<task>/{train.json, test.jsonl, images/, manifest.json}``.

    The split is built in a temporary sibling folder and renamed into place, so a reader never sees
    half a split; an existing split with the same task, seed, sizes and generator version is reused.
    """
    get_task(task)
    wanted = {
        "task": task,
        "seed": _check_count("seed", seed, 0),
        "n_train": _check_count("n_train", n_train, 0),
        "n_test": _check_count("n_test", n_test, 0),
        "image_size": _check_count("image_size", image_size, 16),
        "generator_version": GENERATOR_VERSION,
    }
    root = Path(root)
    files = _files(root, task, wanted, reused=True)
    if _existing_matches(files, wanted):
        return files
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{task}.", suffix=".new", dir=root))
    trash = Path(tempfile.mkdtemp(prefix=f".{task}.", suffix=".old", dir=root))
    try:
        _write_split(staging, task, wanted)
        if files.directory.exists():
            os.replace(files.directory, trash / task)
        os.replace(staging, files.directory)
    except OSError as exc:
        if _existing_matches(files, wanted):  # another process finished the same split first
            return files
        raise DataError(f"{files.directory}: cannot write the {task!r} split: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(trash, ignore_errors=True)
    return _files(root, task, wanted, reused=False)


def build_benchmark(
    root: str | os.PathLike[str],
    tasks: Iterable[str],
    n_train: int | Mapping[str, int],
    n_test: int | Mapping[str, int],
    seed: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    progress: bool = True,
) -> dict[str, TaskFiles]:
    """Write or reuse the split of every task in ``tasks`` (sizes per task if mappings)."""
    names = list(dict.fromkeys(tasks))
    for name in names:
        get_task(name)

    def size(value: int | Mapping[str, int], name: str, what: str) -> int:
        if isinstance(value, Mapping):
            if name not in value:
                raise ConfigError(f"{what} has no entry for task {name!r}")
            return value[name]
        return value

    result = {}
    bar = tqdm(names, desc="synthetic benchmark", unit="task", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        result[name] = write_task_split(
            root, name, size(n_train, name, "n_train"), size(n_test, name, "n_test"), seed, image_size
        )
    return result
