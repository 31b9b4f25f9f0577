"""Command sweeps on the client, the pure half: parameter rows, the command template, the
files that ship with the job and the job's prefix in the bucket. No cloud here: the uploads and
downloads around a run are burst.transfer; the worker side is burst.taskrun.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import shlex
import string
from pathlib import Path
from typing import Any

from burst.spec import MAX_TASKS, JobSpec, ParamFile, SpecError, TaskRange
from burst.taskrun import format_argv

MAX_JOB_FILES = 2000
MAX_JOB_BYTES = 50 * 1024 * 1024
MAX_TASK_FILE_BYTES = 256 * 1024 * 1024  # a CSV or JSON-lines file of tasks
# A command's formatted arguments: Linux refuses one argument over 128 KiB (MAX_ARG_STRLEN),
# and the whole command line is kept far below its 2 MiB limit; a width or precision in a
# format spec ({a:>4000000000}) is bounded before anything is formatted.
MAX_ARGUMENT_BYTES = 128 * 1024
MAX_COMMAND_BYTES = 1024 * 1024
MAX_FORMAT_NUMBER = 1000


def _outside(path: Path, folder: Path) -> Path | None:
    """Where `path` really leads, when a symbolic link takes it out of `folder`."""
    real = path.resolve()
    return None if real.is_relative_to(folder.resolve()) else real


def _link_problem(field: str, name: str, real: Path) -> str:
    return (
        f"{field}: {name!r} is a symbolic link out of the spec's folder (to {str(real)!r}); "
        "accepted: files inside the folder (copy the file in)"
    )


def inside(folder: Path, name: str, field: str) -> Path:
    """`folder / name`, refused when a symbolic link takes it out of the folder (the spec's
    own rules already refuse absolute paths and '..')."""
    path = folder / name
    real = _outside(path, folder)
    if real is not None:
        raise SpecError([_link_problem(field, name, real)])
    return path


def _escaping_links(root: Path, folder: Path) -> list[tuple[Path, Path]]:
    """Symbolic links under `root` (a file or a folder) that lead out of `folder`."""
    found = []
    for here, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(here) / name
            if path.is_symlink():
                real = _outside(path, folder)
                if real is not None:
                    found.append((path, real))
    return found


def missing_inputs(inputs: list[str], folder: Path) -> list[str]:
    """What is wrong with the local inputs: missing, or leading out of the spec's folder
    through a symbolic link (the input itself or any link inside an input folder)."""
    problems = []
    for item in inputs:
        if item.startswith("s3://"):
            continue
        path = folder / item
        real = _outside(path, folder)
        if real is not None:
            problems.append(_link_problem("inputs", item, real))
        elif not path.exists():
            problems.append(f"inputs: {item!r} does not exist in {folder}")
        elif path.is_dir():
            problems += [
                _link_problem("inputs", str(link.relative_to(folder)), real)
                for link, real in _escaping_links(path, folder)
            ]
    return problems


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


# A CSV cell that reads as a number becomes one, so that {alpha:.2f} works: integers without
# a leading zero ("007" stays a string, as an identifier would want), decimals and exponents.
# "nan", "inf" and anything else stay strings.
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_DIGITS = r"[-+]?(?:0|[1-9][0-9]*)"
_FLOAT = re.compile(rf"{_DIGITS}?\.[0-9]+(?:[eE][-+]?[0-9]+)?|{_DIGITS}\.?(?:[eE][-+]?[0-9]+)?")


def typed(cell: str) -> str | int | float:
    """A CSV cell as the number it reads as, or the string itself."""
    text = cell.strip()
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return cell


def read_rows(folder: Path, name: str, kind: str, field: str) -> list[Any]:
    """A CSV file's rows (numbers typed, see `typed`; a byte-order mark is ignored) or a
    JSON-lines file's values; the file must be inside the spec's folder."""
    path = inside(folder, name, field)
    rows: list[Any] = []
    try:
        if path.stat().st_size > MAX_TASK_FILE_BYTES:
            raise SpecError(
                [
                    f"{field}: {name!r} is over {MAX_TASK_FILE_BYTES >> 20} MB; accepted: a "
                    "smaller file of parameters (keep data in inputs, read by the tasks)"
                ]
            )
        with path.open(encoding="utf-8-sig", newline="") as stream:
            if kind == "csv":
                source: Any = (
                    {k: typed(v) if isinstance(v, str) else v for k, v in row.items()}
                    for row in csv.DictReader(stream)
                )
            else:
                source = (json.loads(line) for line in stream if line.strip())
            for row in source:  # counted as read, so a huge file stops at the cap
                if len(rows) == MAX_TASKS:
                    raise SpecError(
                        [
                            f"{field}: {name!r} has more than {MAX_TASKS:,} rows; "
                            f"accepted: at most {MAX_TASKS:,} tasks per job"
                        ]
                    )
                rows.append(row)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as error:
        raise SpecError([f"{field}: cannot read {str(path)!r}: {error}"]) from None
    return rows


def load_params(params: Any, folder: Path) -> list[dict[str, Any]]:
    """The rows of a command job, one per task: a grid's product, a file's rows or a list."""
    if isinstance(params, ParamFile):
        kind, name = ("csv", params.csv) if params.csv else ("jsonl", params.jsonl)
        field = f"run.params.{kind}"
        rows = read_rows(folder, name, kind, field)
        for number, row in enumerate(rows, 1):
            if not isinstance(row, dict) or not all(_scalar(v) for v in row.values()):
                raise SpecError(
                    [
                        f"{field}: row {number} of {name} is not a mapping of names to "
                        f"strings or numbers (got {row!r:.80})"
                    ]
                )
            if None in row:
                raise SpecError([f"{field}: row {number} of {name} has more cells than headers"])
    elif isinstance(params, dict):
        names = list(params)
        columns = [v.values() if isinstance(v, TaskRange) else list(v) for v in params.values()]
        rows = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*columns)]
    else:
        rows = [dict(r) for r in params]
    if not rows:
        raise SpecError(["run.params: at least one task is needed (got none)"])
    return rows


# Programs that parse an argument as code: a value placed there would be code too. Shells
# take their script after an option cluster holding `c`; the others after their code option
# (python -c, perl -e, node --eval, ...) or as their first operand (awk, sed, a script file).
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "busybox"}
INTERPRETERS = {
    "python",
    "pypy",
    "perl",
    "ruby",
    "node",
    "nodejs",
    "deno",
    "Rscript",
    "R",
    "julia",
    "lua",
    "luajit",
    "php",
    "tclsh",
    "wish",
    "awk",
    "gawk",
    "mawk",
    "nawk",
    "sed",
    "gsed",
    "jq",
    "osascript",
    "pwsh",
    "expect",
    "xargs",
    "find",
    "parallel",
}
PROGRAM_FROM_FILE = {"awk", "gawk", "mawk", "nawk", "sed", "gsed"}
# Short options that take the next token as their argument, so it is not the code operand.
OPTION_ARGUMENTS = {"-o", "+o", "-O", "+O", "-W", "-X", "-f", "-v", "-F", "-I", "-M", "-r"}


def _program(token: str) -> str:
    name = Path(token).name
    return re.sub(r"[\d.]+$", "", name) or name  # python3.11 -> python, pypy3 -> pypy


def _code_span(tokens: list[str], start: int) -> int:
    """The index of the last token the interpreter at `start` may read as code: its options
    and its first operand (the script, or the program text; with `-f FILE`, awk and sed read
    their program from FILE, and the operands are data)."""
    program = _program(tokens[start])
    position = start + 1
    while position < len(tokens):
        token = tokens[position]
        if token == "-f" and program in PROGRAM_FROM_FILE:
            return min(position + 1, len(tokens) - 1)
        if token == "--":
            return min(position + 1, len(tokens) - 1)
        if not token.startswith(("-", "+")) or token in ("-", "+"):
            return position  # the first operand: a script or program text
        if token in OPTION_ARGUMENTS:
            position += 1
        position += 1
    return len(tokens) - 1


def _has_placeholder(token: str) -> bool:
    return any(f is not None for _, f, _, _ in string.Formatter().parse(token))


def _refuse_shell_syntax(command: str) -> None:
    """`prog > log.txt`, `a | b`, `a && b`: there is no shell, so these would arrive as the
    program's arguments ("unrecognized arguments: > log.txt"). Lexed as a shell would, so a
    quoted '>5' stays a plain argument, and so does a placeholder's format ({b:>5})."""
    command = re.sub(r"\{\{|\}\}|\{[^{}]*\}", "_", command)
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    for token in lexer:
        if token and set(token) <= set("();<>|&"):
            raise SpecError(
                [
                    f"run.command: {token!r} is shell syntax, and commands run without a shell; "
                    "accepted: write output files into $BURST_OUTPUT (they are collected), or "
                    "run a script that redirects: sh -c 'prog > \"$BURST_OUTPUT/log.txt\"'"
                ]
            )


def _refuse_values_as_code(tokens: list[str]) -> None:
    """A value must never be parsed as code: formatting each argument alone keeps it from the
    shell burst does not use, but a shell or interpreter in the command line (behind `env`,
    `timeout` or any wrapper) would parse its code argument. So no placeholder may stand in
    the program's name, nor in an interpreter's options or code; values may still reach a
    script as its arguments."""
    if _has_placeholder(tokens[0]):
        raise SpecError(
            [
                f"run.command: the program {tokens[0]!r} is chosen by a value; accepted: a fixed "
                "program name, with values as its arguments"
            ]
        )
    for start, token in enumerate(tokens):
        program = _program(token)
        if program not in SHELLS and program not in INTERPRETERS:
            continue
        end = _code_span(tokens, start)
        code = [t for t in tokens[start + 1 : end + 1] if _has_placeholder(t)]
        if code:
            example = (
                f"{token} -c 'simulate --seed \"$1\"' _ {{seed}}"
                if program in SHELLS
                else f"{token} script.py {{seed}}"
            )
            raise SpecError(
                [
                    f"run.command: {code[0]!r} would be read by {token} as code or an option, with "
                    f"a value inside it; accepted: pass values as arguments after the code, e.g. "
                    f"{example}"
                ]
            )


def check_template(command: str, rows: list[dict[str, Any]]) -> list[str]:
    """Split the template as a shell would (once, here), then check every placeholder."""
    try:
        tokens = shlex.split(command)
    except ValueError as error:
        raise SpecError([f"run.command: cannot split {command!r}: {error}"]) from None
    if not tokens:
        raise SpecError(["run.command: an empty command (got '')"])
    names = set()
    try:
        for token in tokens:
            for _, field, spec, _ in string.Formatter().parse(token):
                if field is not None:
                    _check_format_spec(field, spec or "")
                    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", field):
                        raise SpecError(
                            [
                                f"run.command: placeholder {{{field}}} is not accepted; "
                                "{name} of a parameter is (write {{ and }} for literal braces)"
                            ]
                        )
                    names.add(field)
    except ValueError as error:
        raise SpecError([f"run.command: {error} in {command!r}"]) from None
    _refuse_values_as_code(tokens)
    _refuse_shell_syntax(command)
    for number, row in enumerate(rows, 1):
        unknown = sorted(names - set(row))
        if unknown:
            raise SpecError(
                [
                    f"run.command: unknown placeholder {{{unknown[0]}}} (task {number - 1}); "
                    f"the parameters are {', '.join(sorted(row)) or 'none'}"
                ]
            )
        try:
            argv = format_argv(tokens, row)
        except (ValueError, TypeError) as error:
            raise SpecError(
                [f"run.command: cannot format {command!r} with {row!r:.200}: {error}"]
            ) from None
        sizes = [len(arg.encode(errors="surrogateescape")) for arg in argv]
        if max(sizes) > MAX_ARGUMENT_BYTES or sum(sizes) > MAX_COMMAND_BYTES:
            raise SpecError(
                [
                    f"run.command: task {number - 1}'s command line is {sum(sizes):,} bytes, its "
                    f"longest argument {max(sizes):,}; accepted: arguments up to "
                    f"{MAX_ARGUMENT_BYTES:,} bytes and {MAX_COMMAND_BYTES:,} in all (pass "
                    "large values in a file)"
                ]
            )
    return tokens


def _check_format_spec(field: str, spec: str) -> None:
    """A format spec's widths and precisions are bounded ({a:>4000000000} would make a 4 GB
    argument), and it may not take them from a value ({a:{w}})."""
    if "{" in spec:
        raise SpecError(
            [
                f"run.command: the format of {{{field}:{spec}}} holds a placeholder; accepted: "
                "a fixed format such as {temp:.2f} or {seed:04d}"
            ]
        )
    numbers = [int(n) for n in re.findall(r"\d+", spec)]
    if numbers and max(numbers) > MAX_FORMAT_NUMBER:
        raise SpecError(
            [
                f"run.command: the width or precision {max(numbers):,} in {{{field}:{spec}}} is "
                f"too big; accepted: up to {MAX_FORMAT_NUMBER}"
            ]
        )


def _is_environment(path: Path) -> bool:
    return (path / "pyvenv.cfg").exists() or (path / "conda-meta").exists()


def job_files(folder: Path, spec: JobSpec) -> list[Path]:
    """The spec folder's files that ship with a command job (its programs and small data):
    no hidden files, caches, environments, results, or inputs (those ship on their own)."""
    skip = {(folder / i).resolve() for i in spec.inputs if not i.startswith("s3://")}
    skip.add(Path(spec.outputs).resolve())
    files: list[Path] = []
    size = 0
    for root, dirs, names in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".")
            and d != "__pycache__"
            and (here / d).resolve() not in skip
            and not _is_environment(here / d)
        )
        for name in sorted(names):
            path = here / name
            if name.startswith(".") or path.resolve() in skip or not path.is_file():
                continue
            real = _outside(path, folder)
            if real is not None:  # it would ship what it points at
                raise SpecError([_link_problem("run.command", str(path.relative_to(folder)), real)])
            files.append(path.relative_to(folder))
            size += path.stat().st_size
            if len(files) > MAX_JOB_FILES or size > MAX_JOB_BYTES:
                raise SpecError(
                    [
                        f"run.command: the spec's folder {folder} holds more than "
                        f"{MAX_JOB_FILES} files or {MAX_JOB_BYTES >> 20} MB, all of which would "
                        "ship with the job; keep the spec and its programs in a folder of their "
                        "own and name large data in 'inputs'"
                    ]
                )
    return files


def prefix(job_id: str) -> str:
    return f"jobs/{job_id}"
