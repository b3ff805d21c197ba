"""The import graph of blockprune (blockprune/, export/ as blockprune.export, kernels/ as
blockprune.kernels): cycles, edges that run the wrong way by a declared layer order, private
names imported from another module, and library files over 500 lines.

    python bench/import_graph.py            # the working tree
    python bench/import_graph.py --rev REV  # a commit (read with `git show`, nothing checked out)

Every import counts, also those inside functions (they run too). `from . import x` is an edge to
the module `x` when it is one, else to the package; importing `blockprune.export.onnx` from
outside also runs `blockprune.export`. A wrong-way edge is one from a module to a module of a
higher layer (LAYERS, lowest first); modules of the same layer may import each other (without
cycles). A module not in LAYERS is reported, not guessed.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIRS = {"blockprune": "blockprune", "export": "blockprune.export", "kernels": "blockprune.kernels"}
BIG = 500

# lowest first: a module may import its own layer or lower ones
LAYERS = [
    ("base", ["blockprune", "request", "scores", "report_text", "outputs", "kernels"]),
    ("files", ["rundir", "store", "data", "sources", "packing", "stats"]),
    ("tasks", ["kinds", "benchmarks", "loaders", "tasks", "lmeval", "calibration", "gen_task"]),
    ("model", ["adapter", "models", "trie", "fused", "parity", "heal", "decode", "engine"]),
    ("search", ["evaluator", "shard", "cluster", "evolve", "oneshot", "search"]),
    ("analysis", ["analysis", "advice", "plots", "latency_report", "heal_report", "gen_report", "heldout_report", "report", "replaced", "replaced_report", "seed"]),
    ("export", ["export"]),
    ("settings", ["settings"]),
    ("measure", ["generation", "runners", "latency", "heldout", "validate"]),
    ("entry", ["api", "cli", "__main__"]),
]


def layer_of(module: str) -> tuple[int, str] | None:
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else parts[0]
    for i, (layer, names) in enumerate(LAYERS):
        if name in names:
            return i, layer
    return None


def sources(rev: str | None) -> dict[str, str]:
    """{module name: its text} of the working tree or of commit `rev`."""
    out = {}
    if rev is None:
        for d, pkg in DIRS.items():
            for p in sorted((ROOT / d).glob("*.py")):
                out[_name(pkg, p.stem)] = p.read_text(encoding="utf-8")
        return out
    for d, pkg in DIRS.items():
        listing = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{rev}:{d}"], check=True,
                                 capture_output=True, text=True).stdout.split()
        for f in listing:
            if f.endswith(".py"):
                out[_name(pkg, f[:-3])] = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{d}/{f}"], check=True,
                                                         capture_output=True, text=True).stdout
    return out


def _name(pkg: str, stem: str) -> str:
    return pkg if stem == "__init__" else f"{pkg}.{stem}"


def _package(module: str, is_pkg: bool) -> str:
    return module if is_pkg else module.rsplit(".", 1)[0]


def edges(texts: dict[str, str]) -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """({module: modules it imports}, [(module, imported module, private name)])."""
    pkgs = {m for m in texts if m in DIRS.values()}
    graph: dict[str, set[str]] = {m: set() for m in texts}
    private = []
    for mod, text in texts.items():
        base = _package(mod, mod in pkgs)
        for node in ast.walk(ast.parse(text)):
            targets: list[tuple[str, list[str]]] = []
            if isinstance(node, ast.Import):
                targets = [(a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    target = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [(target, [a.name for a in node.names])]
            for target, names in targets:
                if not (target == "blockprune" or target.startswith("blockprune.")):
                    continue
                hits = []
                for n in names:
                    sub = f"{target}.{n}"
                    if sub in texts:
                        hits.append(sub)
                    else:
                        hits.append(target)
                        if n.startswith("_") and not n.startswith("__") and target != mod:
                            private.append((mod, target, n))
                for t in hits or [target]:
                    t = t if t in texts else next((p for p in (t.rsplit(".", 1)[0],) if p in texts), t)
                    if t in texts and t != mod:
                        graph[mod].add(t)
                        # importing a subpackage's module from outside runs the subpackage too
                        parent = t.rsplit(".", 1)[0]
                        if parent in pkgs and parent != "blockprune" and not mod.startswith(parent):
                            graph[mod].add(parent)
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def short(m: str) -> str:
    return m.replace("blockprune.", "") if m != "blockprune" else "blockprune"


def report(rev: str | None) -> str:
    texts = sources(rev)
    graph, private = edges(texts)
    L = [f"== {rev or 'working tree'}: {len(texts)} modules, {sum(map(len, graph.values()))} import edges"]
    cyc = cycles(graph)
    L.append(f"cycles: {len(cyc)}")
    L += ["  " + " <-> ".join(short(m) for m in c) for c in cyc]
    wrong, unknown = [], sorted({short(m) for m in texts if layer_of(m) is None})
    for a in sorted(graph):
        for b in sorted(graph[a]):
            la, lb = layer_of(a), layer_of(b)
            if la and lb and lb[0] > la[0]:
                wrong.append(f"  {short(a)} ({la[1]}) -> {short(b)} ({lb[1]})")
    L.append(f"wrong-way edges (layers, lowest first: {' < '.join(name for name, _ in LAYERS)}): {len(wrong)}")
    L += wrong
    L.append(f"private names imported from another module: {len(private)}")
    L += [f"  {short(a)} -> {short(b)}.{n}" for a, b, n in sorted(set(private))]
    if unknown:
        L.append(f"modules in no layer: {', '.join(unknown)}")
    big = sorted(((len(t.splitlines()), m) for m, t in texts.items() if len(t.splitlines()) > BIG), reverse=True)
    L.append(f"files over {BIG} lines: {len(big)}")
    L += [f"  {short(m)}: {n}" for n, m in big]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", action="append", default=None, help="a commit (repeatable); default: the working tree")
    args = ap.parse_args(argv)
    print("\n\n".join(report(r) for r in (args.rev or [None])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
