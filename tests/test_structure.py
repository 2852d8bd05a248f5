"""The shape of the code a learner reads: no import circles, no module over 450 lines, and the
lessons import only shared plumbing. Imports are read from the source (``ast``), including the
ones inside functions, so a lazy import cannot hide a circle."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("jaxcnn", "experiments")
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports (``from a.b import c`` counts ``a.b.c`` when that
    is a module, else ``a.b``), at any depth of the source."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles_between_modules():
    """(The old tree's jaxcnn.data.tfds_source <-> official circle fails here.) Submodule ->
    own package ``__init__`` edges are left out: a package's face re-exports its parts."""
    graph = {}
    for name, path in MODULES.items():
        graph[name] = {t for t in _imports(name, path)
                       if not (MODULES[t].name == "__init__.py" and name.startswith(t + "."))}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_450_lines(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines: split it by job"


def test_the_library_never_imports_the_experiments():
    offenders = {name: sorted(t for t in _imports(name, path) if t.startswith("experiments"))
                 for name, path in MODULES.items() if name.startswith("jaxcnn")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
