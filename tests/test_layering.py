"""The tree's layering, checked from the source (docs/ARCHITECTURE.md draws it): the controller's
domain stays pure, nothing inside the project imports the wiring module, protocol/ imports only
itself and the interpreter shims, and neither controller/ nor firmware/ has an import cycle.

Every import statement counts, wherever it is (function-level, TYPE_CHECKING blocks): a cycle
hidden by a deferred import is still a cycle. Except where a rule says otherwise."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# protocol/ runs on MicroPython: these are the standard modules both interpreters have.
PROTOCOL_STDLIB = {"struct", "hashlib", "sys", "micropython"}
# The interpreter shims, the one place allowed to reach for CPython-only modules.
PROTOCOL_SHIMS = {"protocol/compat.py": {"hmac"}, "protocol/fastpath.py": {"msgpack"}}
DOMAIN_FORBIDDEN = (
    "controller.transport",
    "controller.store",
    "controller.api",
    "controller.app",
    "controller.pipeline",
    "controller.fleet",
    "paho",
    "aiohttp",
    "psycopg",
    "sqlite3",
)
# Who may import the wiring module: the entry points that run a controller.
APP_IMPORTERS = {"tools/serve_cmds.py", "tools/demo.py"}


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imports(path: Path, runtime_only: bool = False) -> Iterator[tuple[str, int]]:
    """(module, line) for every import in path; `from . import x` resolved to package.x.
    runtime_only skips `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _type_checking(node):
                skip |= {id(n) for b in node.body for n in ast.walk(b)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
            for a in node.names:  # `from controller import registry` imports a module too
                yield f"{node.module}.{a.name}", node.lineno


def modules(package: str) -> dict[str, Path]:
    out = {}
    for p in sorted((ROOT / package).rglob("*.py")):
        if "_mpy" in p.parts:
            continue
        rel = p.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def test_controller_domain_imports_no_io_layer() -> None:
    bad = [
        f"{_rel(p)}:{line} imports {mod}"
        for name, p in modules("controller").items()
        if name.startswith("controller.domain")
        for mod, line in imports(p)
        if mod.startswith(DOMAIN_FORBIDDEN)
    ]
    assert not bad, "the domain must stay pure (sans-I/O):\n" + "\n".join(bad)


def test_only_entry_points_import_the_wiring_module() -> None:
    bad = []
    for package in ("controller", "protocol", "tools", "firmware"):
        for p in modules(package).values():
            if _rel(p) in APP_IMPORTERS:
                continue
            bad += [f"{_rel(p)}:{line}" for mod, line in imports(p) if mod == "controller.app"]
    assert not bad, "controller.app wires the parts; nothing else imports it:\n" + "\n".join(bad)


def test_protocol_imports_only_itself_and_the_interpreter_shims() -> None:
    bad = []
    for p in modules("protocol").values():
        allowed = PROTOCOL_STDLIB | PROTOCOL_SHIMS.get(_rel(p), set())
        for mod, line in imports(p, runtime_only=True):
            top = mod.split(".")[0]
            if top != "protocol" and top not in allowed:
                bad.append(f"{_rel(p)}:{line} imports {mod}")
    assert not bad, "protocol/ runs on MicroPython; keep it to itself:\n" + "\n".join(bad)


def _graph(package: str, bare: bool) -> dict[str, set[str]]:
    """Module -> project modules it imports. bare: firmware modules import each other by bare
    name (the device's flat filesystem)."""
    mods = modules(package)
    names = {n.split(".")[-1]: n for n in mods} if bare else {n: n for n in mods}
    graph: dict[str, set[str]] = {n: set() for n in mods}
    for name, p in mods.items():
        for mod, _ in imports(p):
            target = names.get(mod)
            if target is not None and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize(
    ("package", "bare"), [("controller", False), ("firmware", True), ("sim", False)]
)
def test_no_import_cycles(package: str, bare: bool) -> None:
    found = cycles(_graph(package, bare))
    assert not found, f"import cycles in {package}/: {found}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
