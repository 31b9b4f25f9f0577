"""burst's modules form layers without cycles: each module imports only modules of its own
layer or below (see README, "How the code is laid out").

The imports are read from the source with `ast`, function-level imports included: a lazy
import is still a dependency, and hiding a cycle behind one is what this test is for. Only
imports under `if TYPE_CHECKING:` are left out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "burst"

# Bottom to top. A module may import modules of its own rank or lower, never higher. Every
# module of the package must be listed, so that a new one takes a place on purpose.
LAYERS = {
    # Leaves: no burst imports but each other's (node and taskrun: none at all).
    "burst.errors": 0,
    "burst.money": 0,
    "burst.catalog": 0,
    "burst.software": 0,
    "burst.node": 0,
    "burst.taskrun": 0,
    "burst.drive": 0,
    "burst.home": 0,
    "burst.tls": 0,
    # What the scientist asks for.
    "burst.spec": 1,
    # Pure work on a spec: the plan, the user's job and its sweep, the cost arithmetic.
    "burst.plan": 2,
    "burst.sweep": 2,
    "burst.job": 2,
    "burst.cost": 2,
    "burst.results": 2,
    # The cloud: providers, the bucket, transfers through it, the nodes' user data.
    "burst.cloud": 3,
    "burst.cloud.base": 3,
    "burst.cloud.aws": 3,
    "burst.cloud.sandbox": 3,
    "burst.cloud.limits": 3,
    "burst.cloud.connect": 3,
    "burst.cloud.botoerrors": 3,
    "burst.storage": 3,
    "burst.transfer": 3,
    "burst.bootstrap": 3,
    "burst.wheelhouse": 3,
    # Acquiring capacity through a provider.
    "burst.provision": 4,
    "burst.preflight": 4,
    "burst.events": 4,
    "burst.elasticity": 4,
    # A cluster's life; finding what was left behind.
    "burst.cluster": 5,
    "burst.gc": 5,
    "burst.state": 0,
    # Running a job on a cluster.
    "burst.runner": 6,
    "burst.detached": 6,
    "burst.cli": 7,
    "burst": 8,
}

# Seams inside a layer, finer than the ranks:
# the providers see neutral requests from cloud.base, not plans, jobs or specs ...
PROVIDERS = {
    "burst.cloud",
    "burst.cloud.botoerrors",
    "burst.cloud.base",
    "burst.cloud.aws",
    "burst.cloud.sandbox",
    "burst.cloud.limits",
    "burst.storage",
}
# ... and the layers above drive the Provider protocol: only cloud.connect chooses a concrete
# provider (and the CLI's `burst sandbox` commands manage the sandbox itself).
CONCRETE_PROVIDERS = {"burst.cloud.aws", "burst.cloud.sandbox"}
CHOOSES_THE_CLOUD = PROVIDERS | {"burst.cloud.connect", "burst.cli"}

# Shipped to the nodes, which have no burst installed.
SHIPPED = {"burst.node", "burst.taskrun", "burst.drive"}

# Imports tolerated for now; each entry must still be a violation, so the set only shrinks.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(
    tree: ast.AST, skip_type_checking: bool = True, functions: bool = True
) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, but those under `if TYPE_CHECKING:` (and those in
    functions, with functions=False: what runs when the module is imported)."""
    found = []

    def visit(node: ast.AST) -> None:
        if not functions and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if isinstance(node, ast.If) and skip_type_checking and is_type_checking(node.test):
            for child in node.orelse:  # the else branch does run
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def imported(
    name: str, path: Path, known: set[str], skip_type_checking: bool = True, functions: bool = True
) -> set[str]:
    """The burst modules that `name` imports. `from burst import x` is module burst.x when x is
    a module, else the package burst; relative imports are resolved against the package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in import_nodes(ast.parse(path.read_text()), skip_type_checking, functions):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            targets.add(candidate if candidate in known else base)
    return {t for t in targets if t == "burst" or t.startswith("burst.")}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(name, path, set(found)) - {name} for name, path in found.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A path a -> b -> ... -> a, or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def violations(edges: dict[str, set[str]]) -> dict[tuple[str, str], str]:
    """Each import against the contract, with the rule it breaks."""
    found = {}
    for source, targets in edges.items():
        for target in targets:
            if LAYERS[target] > LAYERS[source]:
                found[source, target] = f"rank {LAYERS[source]} imports rank {LAYERS[target]}"
            elif source in PROVIDERS and LAYERS[target] > 0 and target not in PROVIDERS:
                found[source, target] = "a provider imports above the leaves"
            elif target in CONCRETE_PROVIDERS and source not in CHOOSES_THE_CLOUD:
                found[source, target] = "a concrete provider outside burst.cloud.connect"
    return found


def describe(found: dict[tuple[str, str], str], pairs: set[tuple[str, str]]) -> str:
    return "; ".join(
        f"{a} imports {b} ({found.get((a, b), 'no longer a violation')})" for a, b in sorted(pairs)
    )


def test_every_module_has_a_layer() -> None:
    found = set(modules())
    assert found - set(LAYERS) == set(), "add these modules to LAYERS"
    assert set(LAYERS) - found == set(), "LAYERS lists modules that do not exist"


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_imports_go_down_the_layers() -> None:
    found = violations(graph())
    unexpected = set(found) - KNOWN_VIOLATIONS
    assert not unexpected, "imports against the layers: " + describe(found, unexpected)
    gone = KNOWN_VIOLATIONS - set(found)
    assert not gone, "no longer violated, remove from KNOWN_VIOLATIONS: " + describe(found, gone)


def test_modules_shipped_to_the_nodes_import_nothing_from_burst() -> None:
    found = modules()
    for name in SHIPPED:
        # TYPE_CHECKING imports too: the nodes would not need them, but nor should a reader.
        assert imported(name, found[name], set(found), skip_type_checking=False) == set(), name


def test_packages_import_their_modules_lazily() -> None:
    """Importing burst.x first runs burst/__init__.py: an import there at module level would
    reach every layer from every module, out of sight of the graph above."""
    found = modules()
    for name, path in found.items():
        if path.name == "__init__.py":
            eager = imported(name, path, set(found), functions=False)
            assert eager == set(), f"{name} imports {sorted(eager)} at import time"


def test_the_checker_sees_what_it_must(tmp_path: Path) -> None:
    """The walker itself: function-level imports count, TYPE_CHECKING ones do not, `from burst
    import x` is the module x, relative imports resolve, and a cycle is reported as a path."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from burst import errors, run\n"
        "from . import plan\n"
        "from .cloud import base\n"
        "if TYPE_CHECKING:\n"
        "    from burst.cli import app\n"
        "else:\n"
        "    import burst.tls\n"
        "def f():\n"
        "    from burst.runner import run_job\n"
    )
    known = {
        "burst",
        "burst.errors",
        "burst.plan",
        "burst.cloud.base",
        "burst.cli",
        "burst.tls",
        "burst.runner",
    }
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    seen = imported("burst.probe", probe, known)
    assert seen == {
        "burst",
        "burst.errors",
        "burst.plan",
        "burst.cloud.base",
        "burst.tls",
        "burst.runner",
    }
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_assert_guards_an_invariant() -> None:
    """`python -O` strips asserts: an invariant burst relies on is checked with a raise."""
    found = [
        f"{name}:{node.lineno}"
        for name, path in modules().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assert)
    ]
    assert found == []
