"""The board table and the board contract: every row of firmware/boards.py names a module that
defines what firmware/board.pyi promises (same functions, same parameters, `measures`), the flash
tool reads that same table, and the sim board fills in exactly the metrics it says it measures."""

from __future__ import annotations

import ast
import runpy
from typing import Any

import pytest

from protocol.metrics import REGISTRY
from tests.support.upy import ROOT, run_upy
from tools import flash as F

FIRMWARE = ROOT / "firmware"
TABLE: dict[str, tuple[Any, ...]] = runpy.run_path(str(FIRMWARE / "boards.py"))["BOARDS"]


def _contract() -> tuple[dict[str, tuple[bool, list[str]]], set[str]]:
    """(function name -> (async, parameter names), module-level names) of board.pyi."""
    tree = ast.parse((FIRMWARE / "board.pyi").read_text())
    funcs = {
        n.name: (isinstance(n, ast.AsyncFunctionDef), [a.arg for a in n.args.args])
        for n in tree.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    names = {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)}  # type: ignore[union-attr]
    return funcs, names


def _defined(module: str) -> tuple[dict[str, tuple[bool, list[str]]], set[str]]:
    """The same for a board module: its functions, and names bound at module level."""
    tree = ast.parse((FIRMWARE / f"{module}.py").read_text())
    funcs: dict[str, tuple[bool, list[str]]] = {}
    names: set[str] = set()
    for n in tree.body:
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
            funcs[n.name] = (isinstance(n, ast.AsyncFunctionDef), [a.arg for a in n.args.args])
        elif isinstance(n, ast.Assign):
            names |= {t.id for t in n.targets if isinstance(t, ast.Name)}
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            names.add(n.target.id)
    return funcs, names


@pytest.mark.parametrize("name", sorted(TABLE))
def test_every_board_in_the_table_keeps_the_contract(name: str) -> None:
    module = TABLE[name][0]
    assert (FIRMWARE / f"{module}.py").exists(), f"{name}: no firmware/{module}.py"
    want_funcs, want_names = _contract()
    funcs, names = _defined(module)
    src = (FIRMWARE / f"{module}.py").read_text()
    for fn, sig in want_funcs.items():
        if fn in funcs:
            assert funcs[fn] == sig, f"{module}.{fn}: {funcs[fn]} where board.pyi says {sig}"
        else:  # bound to another function of the same signature (`reset = wdt_feed`)
            alias = next((ln for ln in src.splitlines() if ln.startswith(f"{fn} = ")), None)
            assert alias is not None, f"{module} lacks {fn}() (firmware/board.pyi)"
            target = alias.split("=")[1].split("#")[0].strip()
            assert funcs.get(target) == sig, f"{module}.{fn} = {target}: not {sig}"
    assert want_names <= names, f"{module} lacks {want_names - names} (firmware/board.pyi)"


def test_flash_tool_reads_the_firmware_table() -> None:
    assert {n: (b.module, b.platform, b.chip, b.march) for n, b in F.BOARDS.items()} == {
        n: (row[0], row[1], row[2], row[5]) for n, row in TABLE.items()
    }
    assert F.board("unix") is F.BOARDS["sim"]  # the earlier command-line name
    with pytest.raises(F.FlashError, match="unknown board"):
        F.board("rp2")


SAMPLE = """
import board_sim as b
b.start({"kind": %r, "device": "x-1", "sim": {"speed": 1, "seed": 1}}, "/tmp")
ids = sorted(set(b.measures) | {1, 2, 3, 5, 6})  # as the agent asks: the health ids too
vals = [-999999] * len(ids)
for _ in range(20):
    b.sample(ids, vals, 60)
print(sorted(b.measures))
print([ids[i] for i in range(len(ids)) if vals[i] != -999999])
"""


@pytest.mark.parametrize("kind", ["ap", "sensor"])
def test_sim_board_fills_exactly_what_it_measures(kind: str) -> None:
    out = run_upy(SAMPLE % kind, heap="256K", path=[FIRMWARE]).check().stdout.splitlines()
    measured, touched = eval(out[-2]), eval(out[-1])
    assert measured and set(measured) <= set(REGISTRY)
    assert touched == measured
