"""The module graph (tools/module_graph.py, drawn in docs/architecture.md): no import cycle at module level, no
new cycle through lazy imports, and no optional framework on the import path of the CLI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "module_graph.py"
spec = importlib.util.spec_from_file_location("module_graph", TOOL)
module_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module_graph)

# no cycle, not even through lazy imports (the last two went with the issue-14 redesign)
KNOWN_LAZY_CYCLES: list[set[str]] = []
OPTIONAL = {"[torch]", "[torchvision]", "[tensorrt]", "[cuda]", "[sklearn]", "[matplotlib]"}


def test_no_import_cycle_at_module_level():
    g = module_graph.internal(module_graph.graph())
    assert module_graph.cycles({m: {d for d, how in deps.items() if how == "top"} for m, deps in g.items()}) == []


def test_no_new_cycle_through_lazy_imports():
    found = module_graph.cycles({m: set(deps) for m, deps in module_graph.internal(module_graph.graph()).items()})
    assert [c for c in found if set(c) not in KNOWN_LAZY_CYCLES] == []


def test_the_cli_imports_no_optional_framework_at_module_level():
    """What `deploykit --help` loads: the module-level closure of deploykit.cli holds no optional framework."""
    g = module_graph.graph()
    seen, todo, path = set(), ["deploykit.cli"], {"deploykit.cli": "deploykit.cli"}
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        for dep, how in g.get(mod, {}).items():
            if how == "top" and dep not in path:
                path[dep] = f"{path[mod]} -> {dep}"
                todo.append(dep)
    assert [path[d] for d in sorted(OPTIONAL & set(path))] == []
    assert {"deploykit.cli.export", "deploykit.verify", "deploykit.manifest"} <= seen  # the walk went somewhere


def test_the_graph_sees_lazy_imports():
    g = module_graph.graph()
    assert g["deploykit.runners.torch"].get("[torch]") == "lazy"
    assert g["deploykit.models.zoo"].get("[torch]") == "top"
    assert g["deploykit.cli.app"].get("deploykit.errors") == "top"
