"""Imports run one way (#22, #30): bench/import_graph.py's reading of the whole library. Every module
lives in a package (or is a top-level module: settings, api, cli), each package is a layer, and a
module may import only its own package and the packages below it: no cycle, no import up, no
private name imported across modules, no library file over 500 lines. Planted faults fail it."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("import_graph", ROOT / "bench" / "import_graph.py")
graph_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(graph_mod)


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


def wrong_way(g: dict) -> list[str]:
    out = []
    for a in g:
        for b in g[a]:
            la, lb = graph_mod.layer_of(a), graph_mod.layer_of(b)
            if not (la and lb and lb[0] <= la[0]):
                out.append(f"{a} ({la}) -> {b} ({lb})")
    return out


def test_every_module_is_in_a_package_of_a_layer(graph):
    texts, _, _ = graph
    flat = sorted(m for m in texts if m.count(".") == 1 and m.split(".")[1] not in ("api", "cli", "__main__", "settings")
                  and m not in graph_mod.packages(texts))
    assert not flat, f"modules directly under blockprune/ that belong in a package: {flat}"
    assert not [m for m in texts if graph_mod.layer_of(m) is None]


def test_no_cycle_no_import_up_no_private_names_no_big_files(graph):
    texts, g, private = graph
    assert not graph_mod.cycles(g)
    assert not wrong_way(g)
    assert not private
    assert not [m for m in texts if len(texts[m].splitlines()) > graph_mod.BIG]


def test_the_report_reaches_no_measurement_model_or_engine(graph):
    _, g, _ = graph
    reached = _reach(g, "blockprune.report")
    assert not {m for m in reached if m.startswith(("blockprune.measure", "blockprune.models", "blockprune.engine",
                                                      "blockprune.export", "blockprune.search"))}


def test_a_planted_import_up_a_cycle_and_a_private_name_fail_it(graph):
    texts, _, _ = graph
    planted = dict(texts)
    # the store (runs) reading the report's words: an import up, from a low package to a high one
    planted["blockprune.runs.store"] += "\nfrom ..report import text\n"
    g, _ = graph_mod.edges(planted)
    assert any(w.startswith("blockprune.runs.store ") and "blockprune.report.text" in w for w in wrong_way(g))
    small = {"blockprune": "", "blockprune.report": "", "blockprune.measure": "",
             "blockprune.report.write": "from ..measure import latency\n",
             "blockprune.measure.latency": "from ..report.write import _fmt\n"}
    g, private = graph_mod.edges(small)
    assert ["blockprune.measure.latency", "blockprune.report.write"] in graph_mod.cycles(g)
    assert ("blockprune.measure.latency", "blockprune.report.write", "_fmt") in private
    assert graph_mod.layer_of("blockprune.report.write")[0] < graph_mod.layer_of("blockprune.measure.latency")[0]
    # importing a module of a package from outside runs the package too
    assert "blockprune.measure" in g["blockprune.report.write"]
