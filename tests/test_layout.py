"""The house rules of the layout (issue 17), read from the source with `ast`: no import cycles between the
project's modules, no two modules named alike, every room's `__init__.py` names what lives in it, and the
import direction of DESIGN.md (jobqueue knows only config; nothing imports agent; no production code imports
the tests, but for the one documented dev-only benchmark dependency)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import config

PACKAGES = ("agent", "experiments", "jobqueue", "refiner_model")
SHARED_NAMES = {"__init__.py", "__main__.py", "bench.py"}  # bench.py: `python -m <package>.bench` is a contract


def modules() -> dict[str, Path]:
    out = {"config": config.ROOT / "config.py"}
    for pkg in PACKAGES:
        for path in sorted((config.ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(config.ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n:
                found.add(n)
    return found


def graph() -> dict[str, set[str]]:
    """module → the project modules it imports. A package's own __init__ is not an edge from its children:
    Python runs it before any child anyway (experiments/tasks/__init__.py holds the Task base its task modules
    build on, and imports them inside make_task)."""
    mods = modules()
    return {m: {d for d in imports_of(p, set(mods)) if d != m and not m.startswith(d + ".")} for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_a_planted_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_two_modules_share_a_name():
    seen = defaultdict(list)
    for _m, path in modules().items():
        if path.name not in SHARED_NAMES:
            seen[path.name].append(str(path.relative_to(config.ROOT)))
    assert {n: ps for n, ps in seen.items() if len(ps) > 1} == {}


def test_every_room_says_what_lives_in_it():
    for init in sorted((config.ROOT / "agent").rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert doc, f"{init.relative_to(config.ROOT)} has no docstring"
        assert "import" in doc, f"{init.relative_to(config.ROOT)} does not say what it may import"
        for mod in sorted(init.parent.glob("*.py")):
            if mod.name not in ("__init__.py", "__main__.py"):
                assert mod.name in doc or mod.stem in doc, f"{init.relative_to(config.ROOT)} does not name {mod.name}"


def test_import_direction():
    g = graph()
    for m, deps in g.items():
        top = m.split(".")[0]
        if top == "jobqueue":
            assert {d.split(".")[0] for d in deps} <= {"jobqueue", "config"}, (m, deps)
        if top in ("refiner_model",):
            assert {d.split(".")[0] for d in deps} <= {"refiner_model", "config"}, (m, deps)
        if top != "agent":
            assert not any(d.startswith("agent") for d in deps), (m, deps)
    for m, path in modules().items():
        if m != "agent.bench":  # its dev-only use of tests/ghserver.py is documented in its docstring
            assert "from tests" not in path.read_text() and "import tests" not in path.read_text(), m
