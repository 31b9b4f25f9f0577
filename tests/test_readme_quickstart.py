"""The README's "first job from scratch" is real: its code and spec, copied out of the README,
validate, plan, and give the result it promises; the notebook extra installs what executing
the notebook needs."""

from __future__ import annotations

import re
import sys
import textwrap
import tomllib

from typer.testing import CliRunner

from burst.cli import app
from burst.job import load_job
from tests.conftest import REPO


def first_job_blocks() -> dict[str, str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Your first job, from scratch")[1].split("\n## ")[0]
    blocks = re.findall(r"```(python|yaml)\n(.*?)```", section, flags=re.S)
    return {kind: textwrap.dedent(body) for kind, body in blocks}


def test_the_first_job_of_the_readme_runs_as_promised(tmp_path, monkeypatch):
    blocks = first_job_blocks()
    folder = tmp_path / "myjob"
    folder.mkdir()
    (folder / "square.py").write_text(blocks["python"])
    (folder / "squares.yaml").write_text(blocks["yaml"])
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "square", raising=False)
    job = load_job(folder / "squares.yaml")
    assert job.reduce([job.function(task) for task in job.tasks]) == 328350  # as the README says
    readme = (REPO / "README.md").read_text()
    assert "prints `result 328350`" in readme
    monkeypatch.chdir(tmp_path)
    planned = CliRunner().invoke(app, ["plan", "myjob/squares.yaml", "--set", "cores=8",
                                       "--set", "run.tasks.range=1000"])
    assert planned.exit_code == 0 and "8 worker cores" in planned.stdout
    typo = (folder / "squares.yaml").read_text().replace("max_runtime", "max_runtim")
    (folder / "typo.yaml").write_text(typo)
    refused = CliRunner().invoke(app, ["run", "myjob/typo.yaml"])
    assert refused.exit_code == 2 and "did you mean max_runtime?" in refused.stderr
    monkeypatch.delitem(sys.modules, "square", raising=False)


def test_the_notebook_extra_installs_what_executing_the_notebook_needs():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    names = {re.split(r"[<>=\[]", requirement)[0] for requirement in extras["notebook"]}
    assert {"pandas", "nbclient", "ipykernel", "nbformat"} <= names
    assert "jupyter execute notebooks/quickstart.ipynb" in (REPO / "README.md").read_text()
