"""Hostile specs (issue 12): each is refused with exit 2 before any work, quickly and with
bounded memory: YAML alias bombs and duplicate keys, huge task counts, grids, format widths
and arguments, file fields that leave the job's folder, markup in error values, and
functions from outside the job's folder."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from burst.cli import app
from burst.job import load_job
from burst.spec import SpecError, load_spec

PI = "import random\n\ndef sample(seed):\n    return seed\n"


def spec_file(folder: Path, text: str) -> Path:
    path = folder / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def refused(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_job(path)
    return info.value.problems


# --------------------------------------------------------------------------- YAML


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    path = spec_file(tmp_path, "\n".join(levels) + "\ncores: 4\nrun: {function: m:f, tasks: *i}\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)  # 9**9 values if expanded: it must not be
    assert info.value.problems[0].startswith("spec: its aliases (*name) expand it to more than")


def test_a_few_aliases_are_still_fine(tmp_path: Path) -> None:
    path = spec_file(tmp_path, """\
        cores: &n 4
        min_cores: *n
        run: {function: m:f, tasks: [1, 2]}
    """)
    assert load_spec(path).min_cores == 4


@pytest.mark.parametrize(("text", "key", "lines"), [
    ("cores: 4\nname: a\ncores: 8\nrun: {function: m:f, tasks: [1]}\n", "cores", (1, 3)),
    ("cores: 4\nrun:\n  function: m:f\n  tasks: [1]\n  retries: 1\n  retries: 3\n", "retries",
     (5, 6)),
])
def test_duplicate_keys_are_refused_with_the_key_and_lines(tmp_path, text, key, lines) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(spec_file(tmp_path, text))
    assert info.value.problems == [
        f"{key}: the key {key!r} appears twice in the same mapping (line {lines[0]} and line "
        f"{lines[1]}); accepted: each key once"
    ]


def test_deep_nesting_is_a_spec_error(tmp_path: Path) -> None:
    path = spec_file(tmp_path, "cores: 4\nx: " + "[" * 1200 + "]" * 1200 + "\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "nested too deeply" in info.value.problems[0]
