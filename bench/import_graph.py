"""The import graph of blockprune (blockprune/ and its packages, export/ as blockprune.export,
kernels/ as blockprune.kernels): cycles, imports that run the wrong way by the declared order of
the packages, private names imported from another module, and library files over 500 lines.

    python bench/import_graph.py            # the working tree
    python bench/import_graph.py --rev REV  # a commit (read with `git show`, nothing checked out)
    python bench/import_graph.py --packages # also the table of which package imports which

Every import counts, also those inside functions (they run too). `from . import x` is an edge to
the module `x` when it is one, else to the package; importing a module of a package from outside
it also runs the package's `__init__`. Each package (and each top-level module: settings, api,
cli) is one layer of LAYERS, lowest first: a module may import modules of its own package and of
the packages below it, never above. A module in no layer is reported, not guessed.
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

# lowest first: a module may import its own package or the packages below it
LAYERS = [
    ("base", ["blockprune", "kernels"]),  # blockprune/__init__ (versions) and the Triton kernels
    ("data", ["data"]),
    ("runs", ["runs"]),
    ("tasks", ["tasks"]),
    ("models", ["models"]),
    ("engine", ["engine"]),
    ("healing", ["healing"]),
    ("analysis", ["analysis"]),
    ("search", ["search"]),
    ("report", ["report"]),
    ("export", ["export"]),
    ("settings", ["settings"]),
    ("measure", ["measure"]),
    ("entry", ["api", "cli", "__main__"]),
]


def layer_of(module: str) -> tuple[int, str] | None:
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else parts[0]
    for i, (layer, names) in enumerate(LAYERS):
        if name in names:
            return i, layer
    return None


def _files(rev: str | None, d: str) -> list[str]:
    """Paths of the .py files under `d` (relative to it), of the working tree or commit `rev`;
    not through links (a checkout may link blockprune/export to export/)."""
    if rev is None:
        base = ROOT / d
        found = []
        for p in sorted(base.rglob("*.py")):
            rel = p.relative_to(base)
            if not any((base / Path(*rel.parts[:i])).is_symlink() for i in range(1, len(rel.parts) + 1)):
                found.append(str(rel))
        return found
    out = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", f"{rev}:{d}"], check=True,
                         capture_output=True, text=True).stdout.split()
    return sorted(f for f in out if f.endswith(".py"))


def sources(rev: str | None) -> dict[str, str]:
    """{module name: its text} of the working tree or of commit `rev`."""
    out = {}
    for d, pkg in DIRS.items():
        for f in _files(rev, d):
            if rev is None:
                text = (ROOT / d / f).read_text(encoding="utf-8")
            else:
                text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{d}/{f}"], check=True,
                                      capture_output=True, text=True).stdout
            parts = f[:-3].split("/")
            out[_name(pkg, parts)] = text
    return out


def _name(pkg: str, parts: list[str]) -> str:
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join([pkg, *parts])


def _package(module: str, is_pkg: bool) -> str:
    return module if is_pkg else module.rsplit(".", 1)[0]


def packages(texts: dict[str, str]) -> set[str]:
    """The modules that are packages: those another module lives in."""
    return {m.rsplit(".", 1)[0] for m in texts if "." in m} | {m for m in texts if m in DIRS.values()}


def edges(texts: dict[str, str]) -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """({module: modules it imports}, [(module, imported module, private name)])."""
    pkgs = packages(texts)
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


def package_of(module: str) -> str:
    """The layer's name of a module: its package under blockprune, or the top-level module."""
    found = layer_of(module)
    return found[1] if found else short(module)


def package_table(texts: dict[str, str], graph: dict[str, set[str]]) -> str:
    """Which package imports which (edges between modules of two packages, counted)."""
    counts: dict[tuple[str, str], int] = {}
    for a, targets in graph.items():
        for b in targets:
            pa, pb = package_of(a), package_of(b)
            if pa != pb:
                counts[(pa, pb)] = counts.get((pa, pb), 0) + 1
    order = [name for name, _ in LAYERS]
    rows = ["| package | modules | lines | imports (edges) |", "| --- | --- | --- | --- |"]
    for name in reversed(order):
        mods = [m for m in texts if package_of(m) == name]
        if not mods:
            continue
        lines = sum(len(texts[m].splitlines()) for m in mods)
        deps = sorted(((pb, n) for (pa, pb), n in counts.items() if pa == name), key=lambda x: -order.index(x[0]))
        rows.append(f"| {name} | {len(mods)} | {lines} | {', '.join(f'{pb} ({n})' for pb, n in deps) or '—'} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", action="append", default=None, help="a commit (repeatable); default: the working tree")
    ap.add_argument("--packages", action="store_true", help="also print which package imports which")
    args = ap.parse_args(argv)
    for r in args.rev or [None]:
        print(report(r))
        if args.packages:
            texts = sources(r)
            print("\n" + package_table(texts, edges(texts)[0]))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
