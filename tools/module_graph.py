"""The import graph of deploykit's modules, as text, and the import cycles in it.

    python tools/module_graph.py            # module -> the deploykit modules it imports (top-level | lazy)
    python tools/module_graph.py --packages # the same folded to packages (cli, models, precision, runners, ...)
    python tools/module_graph.py --check    # exit 1 when there is an import cycle (counting lazy imports)
    python tools/module_graph.py --update-docs  # rewrite both graphs in docs/architecture.md

Heavy or optional third-party packages a module imports are shown in brackets ([torch], [tensorrt], ...).

Reads the sources with ``ast`` (nothing is imported). An import at module level is "top"; one inside a function
(deploykit's lazy imports of torch, TensorRT, ... and of its own heavier modules) is "lazy". A cycle through lazy
imports does not fail at import time, but it still means two modules each need the other.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# third-party packages that are heavy or optional (shown as [name]; the base install has none of the first six)
HEAVY = ("torch", "torchvision", "tensorrt", "cuda", "sklearn", "matplotlib", "onnxruntime", "onnx", "skimage",
         "rich", "typer")


def child_level(node: ast.AST) -> int:
    return getattr(node, "level", 0) or 0


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, modules: set[str]) -> dict[str, str]:
    """{deploykit module imported: "top" | "lazy"} for one file (top wins over lazy)."""
    tree = ast.parse(path.read_text())
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, str] = {}

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + [base]).strip(".")
                # `from deploykit.cli import export` names a module; `from deploykit.x import f` names x
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in child.names]
            for target in targets:
                if not child_level(child) and target.split(".")[0] in HEAVY:  # a third-party package
                    target = f"[{target.split('.')[0]}]"
                else:
                    while target and target not in modules:  # deploykit.precision.build.X -> ...precision.build
                        target = target.rpartition(".")[0]
                    if not target.startswith("deploykit") or target == name:
                        continue
                if found.get(target) != "top":
                    found[target] = "lazy" if lazy else "top"
            if not isinstance(child, (ast.Import, ast.ImportFrom)):
                visit(child, inner)

    visit(tree, False)
    return found


def graph() -> dict[str, dict[str, str]]:
    files = sorted((SRC / "deploykit").rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports(f, modules) for f in files}


def package_of(module: str) -> str:
    """deploykit.cli.export -> cli; deploykit.verify -> verify (a top-level module is its own package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def internal(g: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    return {m: {d: how for d, how in deps.items() if not d.startswith("[")} for m, deps in g.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
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
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def short(module: str) -> str:
    return module.removeprefix("deploykit.") or module


def ordered(deps: list[str]) -> list[str]:
    """deploykit modules first, then [third-party]."""
    return sorted(deps, key=lambda d: (d.startswith("["), d))


DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
DOC_BLOCKS = {"## Packages": True, "## Modules": False}  # section of docs/architecture.md -> packages folded


def fold(g: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """The module graph folded to packages (an edge is "top" when any module imports it at module level)."""
    folded: dict[str, dict[str, str]] = defaultdict(dict)
    for mod, deps in g.items():
        src = package_of(mod)
        folded.setdefault(src, {})
        for dep, how in deps.items():
            dst = dep if dep.startswith("[") else package_of(dep)
            if dst != src and folded[src].get(dst) != "top":
                folded[src][dst] = how
    return dict(folded)


def render(g: dict[str, dict[str, str]], packages: bool) -> str:
    """The text this tool prints: one line per module (or package), then the cycles."""
    if packages:
        g = fold(g)
    name = str if packages else short
    width = max(len(name(m)) for m in g)
    lines = []
    for mod in sorted(g):
        top = ordered([name(d) for d, how in g[mod].items() if how == "top"])
        lazy = ordered([name(d) for d, how in g[mod].items() if how == "lazy"])
        line = f"{name(mod):<{width}} -> {', '.join(top) or '-'}"
        if lazy:
            line += f"  | lazy: {', '.join(lazy)}"
        lines.append(line)
    found = cycles({m: set(d) for m, d in internal(g).items()})
    top_only = cycles({m: {d for d, how in deps.items() if how == "top"} for m, deps in internal(g).items()})
    lines += ["", f"cycles (top-level imports only): {'; '.join(' <-> '.join(map(name, c)) for c in top_only) or 'none'}",
              f"cycles (counting lazy imports): {'; '.join(' <-> '.join(map(name, c)) for c in found) or 'none'}"]
    return "\n".join(lines) + "\n"


def doc_block(text: str, heading: str) -> tuple[int, int]:
    """Where the first fenced block after ``heading`` starts and ends in ``text`` (its content, fences excluded)."""
    start = text.index("```\n", text.index(heading + "\n")) + 4
    return start, text.index("```", start)


def update_docs(g: dict[str, dict[str, str]], doc: Path = DOC) -> bool:
    """Rewrite the Packages and Modules graphs of docs/architecture.md; True when anything changed."""
    text = old = doc.read_text()
    for heading, packages in DOC_BLOCKS.items():
        start, end = doc_block(text, heading)
        text = text[:start] + render(g, packages) + text[end:]
    if text != old:
        doc.write_text(text)
    return text != old


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", action="store_true", help="fold modules into packages")
    parser.add_argument("--check", action="store_true", help="exit 1 when there is an import cycle")
    parser.add_argument("--update-docs", action="store_true", help="rewrite the graphs in docs/architecture.md")
    args = parser.parse_args(argv)
    g = graph()
    if args.update_docs:
        print(f"{DOC}: {'updated' if update_docs(g) else 'already current'}")
        return 0
    print(render(g, args.packages), end="")
    found = cycles({m: set(d) for m, d in internal(g).items()})
    return 1 if args.check and found else 0


if __name__ == "__main__":
    raise SystemExit(main())
