"""Imports run one way (#22): bench/import_graph.py's reading of the package, checked for the
modules whose layering was repaired: no cycle through them, no edge to a higher layer, no private
name imported across modules, no library file over 500 lines among them."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("import_graph", ROOT / "bench" / "import_graph.py")
graph_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(graph_mod)

MINE = {"blockprune." + m for m in ("adapter", "models", "parity", "outputs", "rundir", "latency", "latency_report",
                                     "generation", "heldout", "replaced", "replaced_report", "report", "report_text",
                                     "plots", "sources", "heal", "calibration", "decode", "gen_task",
                                     "heal_report", "gen_report", "heldout_report", "benchmarks")} | {"blockprune.export", "blockprune.export.discovery"}


@pytest.fixture(scope="module")
def graph():
    texts = graph_mod.sources(None)
    return texts, *graph_mod.edges(texts)


def _reach(graph, start):
    seen, todo = set(), [start]
    while todo:
        for n in graph[todo.pop()]:
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_the_report_reaches_no_measurement_model_or_engine(graph):
    _, g, _ = graph
    reached = _reach(g, "blockprune.report")
    assert not reached & {"blockprune.latency", "blockprune.generation", "blockprune.models", "blockprune.engine",
                          "blockprune.heldout", "blockprune.export"}


def test_no_cycle_and_no_wrong_way_edge_through_these_modules(graph):
    _, g, _ = graph
    assert not [c for c in graph_mod.cycles(g) if set(c) & MINE]
    for a in MINE & set(g):
        for b in g[a]:
            la, lb = graph_mod.layer_of(a), graph_mod.layer_of(b)
            assert la and lb and lb[0] <= la[0], f"{a} ({la}) -> {b} ({lb})"


def test_no_private_names_across_modules_and_no_big_files(graph):
    texts, _, private = graph
    assert not [p for p in private if p[0] in MINE]
    assert not [m for m in MINE & set(texts) if len(texts[m].splitlines()) > 500]


def test_the_graph_reader_finds_a_planted_cycle_and_a_wrong_way_edge():
    texts = {"blockprune": "", "blockprune.report": "from . import latency\n",
             "blockprune.latency": "from .report import _fmt\n"}
    g, private = graph_mod.edges(texts)
    assert graph_mod.cycles(g) == [["blockprune.latency", "blockprune.report"]]
    assert ("blockprune.latency", "blockprune.report", "_fmt") in private
    assert graph_mod.layer_of("blockprune.report")[0] < graph_mod.layer_of("blockprune.latency")[0]
