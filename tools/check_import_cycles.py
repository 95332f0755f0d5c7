"""Fail when the package's own modules import each other in a cycle (not a unit test: CI runs it).

Builds the graph of every import between modules of one package, read with `ast`: module-level imports
and imports inside functions alike (an import moved into a function still makes a cycle, it only hides
it until run time). `from . import x` is an edge to the submodule `x` when there is one, else to the
package itself; `if TYPE_CHECKING:` imports count too. Prints each cycle it finds as `a -> b -> a`.

    python tools/check_import_cycles.py [PACKAGE_DIR]     (default: lora_trainer)
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parent.parent


def module_names(package: Path) -> Dict[str, Path]:
    """{dotted module name: file} of every .py file under `package` (a package is its __init__.py)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: Set[str]) -> Set[str]:
    """The package's modules that module `name` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            targets = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a name inside a.b: the module a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def tangles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan): the modules that import
    each other, directly or through others."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def shortest_cycle(graph: Dict[str, Set[str]], members: Set[str], start: str) -> List[str]:
    """The shortest path start -> ... -> start inside one strongly connected component."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return [start, start]


def main(argv: List[str]) -> int:
    package = Path(argv[0]) if argv else ROOT / "lora_trainer"
    modules = module_names(package)
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    found = tangles(graph)
    for members in found:
        print("import cycle: " + " -> ".join(shortest_cycle(graph, set(members), members[0])))
        if len(members) > 2:
            print(f"  tangled with it: {', '.join(members)}")
    edges = sum(len(v) for v in graph.values())
    print(f"{len(modules)} modules, {edges} imports between them, {len(found)} cycle(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
