"""docs/configuration.md is generated from the config dataclasses (issue 23): it lists every key
with its default and meaning, and this test fails when the file and the code disagree."""

from __future__ import annotations

import dataclasses

import pytest

from secure_fcit import config as config_module
from secure_fcit.configdoc import DEFAULT_OUT, configuration_markdown, main
from secure_fcit.errors import ConfigError


def test_the_committed_configuration_doc_matches_the_code():
    assert DEFAULT_OUT.read_text() == configuration_markdown(), "regenerate: python -m secure_fcit.configdoc"
    assert main(["--check"]) == 0


def test_every_key_of_every_section_is_listed_with_its_default():
    text = configuration_markdown()
    for f in dataclasses.fields(config_module.Config):
        section = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if section is None:
            assert f"| `{f.name}` |" in text
            continue
        assert f"## `[{f.name}]`" in text
        for g in dataclasses.fields(section):
            assert f"| `{g.name}` |" in text, f"{f.name}.{g.name}"
    assert '| `epsilon` | float | `8` |' in text


def test_a_field_without_a_meaning_is_an_error(monkeypatch, tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Undocumented:
        #: documented
        a: int = 1
        b: int = 2

    @dataclasses.dataclass(frozen=True)
    class Root:
        #: top
        seed: int = 0
        extra: Undocumented = dataclasses.field(default_factory=Undocumented)

    monkeypatch.setattr(config_module, "Config", Root)
    with pytest.raises(ConfigError, match=r"without a '#:' comment .*: extra\.b$"):
        configuration_markdown()
    stale = tmp_path / "configuration.md"
    stale.write_text("old")
    monkeypatch.undo()
    assert main(["--check", "--out", str(stale)]) == 1
