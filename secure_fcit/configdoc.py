"""``docs/configuration.md``, generated from the config dataclasses so that it cannot drift.

    python -m secure_fcit.configdoc [--out docs/configuration.md] [--check]

Every key of every ``[section]`` (the fields of `config.Config`'s section dataclasses), with its
type, its default and its meaning: the ``#:`` comment above the field in ``secure_fcit/config.py``.
A field without one is an error here (and in the test that compares the committed file).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
from pathlib import Path

from . import config as config_module
from .errors import ConfigError

__all__ = ["configuration_markdown", "field_comments"]

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def field_comments(cls: type) -> dict[str, str]:
    """``{field: meaning}`` from the ``#:`` comment lines right above each field of ``cls``."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    tree = ast.parse(source)
    body = tree.body[0].body
    out: dict[str, str] = {}
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            k = node.lineno - 2  # the line above, 0-based
            comment: list[str] = []
            while k >= 0 and lines[k].strip().startswith("#:"):
                comment.insert(0, lines[k].strip()[2:].strip())
                k -= 1
            if comment:
                out[node.target.id] = " ".join(comment)
    return out


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "unset"
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def configuration_markdown() -> str:
    """The whole ``docs/configuration.md``; ConfigError naming every field that has no meaning."""
    cfg = config_module.Config
    out = [
        "# Configuration",
        "",
        "Every key of a secure-fcit TOML config (`configs/*.toml`), by section, with its default and",
        "meaning. Unknown keys are refused by name at load; `--set SECTION.KEY=VALUE` (a TOML value)",
        "overrides any of them on the command line. Many combinations are also checked together at load",
        "(for example distributed DP with the plaintext aggregator is refused, with the numbers).",
        "",
        "Generated from `secure_fcit/config.py` by `python -m secure_fcit.configdoc`; a test fails when",
        "this file and the code disagree.",
        "",
    ]
    missing = []
    sections = []
    for f in dataclasses.fields(cfg):
        section_cls = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if section_cls is not None and dataclasses.is_dataclass(section_cls):
            sections.append((f.name, section_cls))
    top = [f for f in dataclasses.fields(cfg) if f.name not in {name for name, _ in sections}]
    top_comments = field_comments(cfg)
    out += ["## Top level", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    for f in top:
        meaning = top_comments.get(f.name)
        if meaning is None:
            missing.append(f.name)
        out.append(f"| `{f.name}` | {_cell(str(f.type))} | `{_default(f)}` | {_cell(meaning or '')} |")
    out.append("")
    for name, section_cls in sections:
        doc = inspect.getdoc(section_cls) or ""
        summary = "" if doc.startswith(section_cls.__name__ + "(") else doc.split("\n\n")[0].replace("\n", " ")
        out += [f"## `[{name}]`", ""]
        if summary:
            out += [summary, ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        comments = field_comments(section_cls)
        for f in dataclasses.fields(section_cls):
            meaning = comments.get(f.name)
            if meaning is None:
                missing.append(f"{name}.{f.name}")
            out.append(f"| `{f.name}` | {_cell(str(f.type))} | `{_cell(_default(f))}` | {_cell(meaning or '')} |")
        out.append("")
    if missing:
        raise ConfigError(f"config fields without a '#:' comment in secure_fcit/config.py: {', '.join(missing)}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--check", action="store_true", help="exit 1 if --out differs from the code")
    args = ap.parse_args(argv)
    try:
        text = configuration_markdown()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    if args.check:
        if not out.is_file() or out.read_text() != text:
            print(f"{out} is out of date: python -m secure_fcit.configdoc", file=sys.stderr)
            return 1
        return 0
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
