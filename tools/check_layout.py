"""Check the package layout (docs/ARCHITECTURE.md): no import cycles (between modules or sub-packages), no
module name used twice, no private name imported across modules, and dependencies that point one way:

    kernels/  <-  core (config, schedule, options, detect, channel_mode, token_plan, attention, ...)
              <-  integration (diffusers/, demo/, eval/, cli)

Every ``import`` / ``from ... import`` in a module counts (top level or inside a function), except those
under ``if TYPE_CHECKING:``. Usage: ``python3 tools/check_layout.py [src/timeripple]``; exit status 1 when
anything is found (tests/test_layout.py runs it in CI).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path


LAYERS = ("kernels", "core", "integration")
INTEGRATION = ("diffusers", "demo", "eval", "cli", "peers")  # sub-packages / modules on top of the core
BASE = ("_validation", "options")  # imported by every layer, importing nothing of the package


def layer(module: str, package: str) -> int:
    """0 = kernels (and the base modules they may use), 1 = core, 2 = integration; the package's own
    ``__init__`` (lazy re-exports) counts as integration."""
    parts = module.split(".")[1:]
    if not parts:
        return 2
    if parts[0] == "kernels" or parts[0] in BASE:
        return 0
    return 2 if parts[0] in INTEGRATION else 1


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def scan(root: Path):
    modules = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph, private = defaultdict(set), []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [(base, a.name) for a in node.names]
            for target, attr in targets:
                if not target.startswith(root.name):
                    continue
                sub = f"{target}.{attr}" if attr else None
                dest = sub if sub in modules else target
                if dest in modules and dest != name:
                    graph[name].add(dest)
                if attr and attr.startswith("_") and not attr.startswith("__") and dest != sub:
                    private.append(f"{name} imports private {attr} from {target}")
    return modules, graph, private


def cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else Path(__file__).resolve().parents[1] / "src" / "timeripple").resolve()
    modules, graph, private = scan(root)
    problems = []
    for comp in cycles(graph):
        problems.append("import cycle: " + " <-> ".join(comp))
    # the same at the level of sub-packages (timeripple.eval -> timeripple.demo -> timeripple.eval)
    def unit(m):
        parts = m.split(".")
        return ".".join(parts[:2]) if len(parts) > 2 or modules[m].name == "__init__.py" else m
    packages = defaultdict(set)
    for m, deps in graph.items():
        for d in deps:
            if unit(m) != unit(d) and unit(m) != root.name and "." in unit(m):
                packages[unit(m)].add(unit(d))
    for comp in cycles(packages):
        if any(c.count(".") == 1 and modules.get(c, Path("x/__init__.py")).name == "__init__.py" for c in comp):
            problems.append("package cycle: " + " <-> ".join(comp))
    names = defaultdict(list)
    for name, path in modules.items():
        if path.name != "__init__.py":
            names[path.stem].append(name)
    for stem, owners in sorted(names.items()):
        if len(owners) > 1:
            problems.append(f"module name {stem!r} used {len(owners)} times: {', '.join(owners)}")
    problems.extend(private)
    for name, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if layer(name, root.name) < layer(dep, root.name):
                problems.append(f"{name} (layer {LAYERS[layer(name, root.name)]}) imports {dep} "
                                f"(layer {LAYERS[layer(dep, root.name)]}): dependencies must point down")
    for p in problems:
        print(p)
    print(f"{len(modules)} modules, {sum(map(len, graph.values()))} internal imports, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
