"""The module graph (tools/module_graph.py, drawn in docs/architecture.md): no import cycle at module level, no
new cycle through lazy imports, no optional framework on the import path of the CLI, and the layering the
document states -- which package may import which, only `cli` draws with rich/typer, torch at module level only in
`models.zoo` -- with the document's graphs equal to the sources' (so it cannot drift); and the size limits (no
module over 450 lines, no function over 80, a short list of exemptions with their reasons)."""

from __future__ import annotations

import importlib.util
import re
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


# -- the layering docs/architecture.md states ---------------------------------------------------------------------
RULE = re.compile(r"^(\S+)\s+may import (.+)$")


def _rules() -> dict[str, set[str] | None]:
    """The "may import" table of docs/architecture.md: package -> the packages it may import (None: any)."""
    text = module_graph.DOC.read_text()
    rules: dict[str, set[str] | None] = {}
    for line in text.splitlines():
        match = RULE.match(line)
        if match:
            allowed = match.group(2).strip()
            rules[match.group(1)] = None if allowed == "*" else \
                set() if allowed == "-" else {p.strip() for p in allowed.split(",")}
    return rules


def test_the_layering_table_is_there_and_covers_every_package():
    rules = _rules()
    packages = {module_graph.package_of(m) for m in module_graph.graph()}
    assert {"errors", "manifest", "verify", "cli"} <= set(rules)  # the table was read
    assert sorted(packages - set(rules)) == [], "a package without a line in docs/architecture.md's table"


def test_every_import_is_one_the_layering_allows():
    """Module level and lazy alike: an edge the table does not list is a layering break or a stale document."""
    rules = _rules()
    broken = []
    for mod, deps in module_graph.internal(module_graph.graph()).items():
        src = module_graph.package_of(mod)
        allowed = rules.get(src, set())
        for dep in deps:
            dst = module_graph.package_of(dep)
            if dst != src and allowed is not None and dst not in allowed:
                broken.append(f"{mod} -> {dep} ({src} may import {', '.join(sorted(allowed)) or 'nothing'})")
    assert broken == [], "fix the import, or the table in docs/architecture.md if the new edge is right"


def test_only_the_cli_imports_rich_or_typer():
    found = [f"{m} -> {d}" for m, deps in module_graph.graph().items() for d in deps
             if d in ("[rich]", "[typer]") and module_graph.package_of(m) != "cli"]
    assert found == []


def test_torch_at_module_level_only_in_the_zoo_and_no_device_framework_at_module_level():
    top = {(m, d) for m, deps in module_graph.graph().items() for d, how in deps.items() if how == "top"}
    assert sorted(m for m, d in top if d in ("[torch]", "[torchvision]")) == ["deploykit.models.zoo"]
    assert sorted(f"{m} -> {d}" for m, d in top if d in ("[tensorrt]", "[cuda]", "[matplotlib]")) == []


def test_the_documents_graphs_are_the_sources_graphs():
    """docs/architecture.md's Packages and Modules graphs, as tools/module_graph.py draws them from the sources
    today (regenerate: python tools/module_graph.py --update-docs)."""
    text, g = module_graph.DOC.read_text(), module_graph.graph()
    for heading, packages in module_graph.DOC_BLOCKS.items():
        start, end = module_graph.doc_block(text, heading)
        assert text[start:end] == module_graph.render(g, packages), \
            f"{heading} in docs/architecture.md is stale: python tools/module_graph.py --update-docs"


# -- size: no module over 450 lines, no function over 80 (issue 24's targets) -------------------------------------
SRC = Path(__file__).resolve().parents[1] / "src" / "deploykit"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80  # from the first decorator to the last line: a Typer command's option declarations count

# The only modules and functions allowed past the limits, each with its reason. Keep this list short.
LONG_MODULES = {
    "tensorrt/capabilities_data.py": "generated data (tools/trt_capabilities.py): the published operator tables",
}
LONG_FUNCTIONS = {
    "precision/int8.py:qdq_trt": "a graph rewrite: one pass placing Q/DQ pairs and INT8 weights node by node",
}


def _sizes() -> tuple[dict[str, int], dict[str, int]]:
    """(module -> lines, "module:function" -> lines) for every module under src/deploykit (methods and nested
    functions included; the longest of a name when a module defines it twice)."""
    import ast

    modules, functions = {}, {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        text = path.read_text()
        modules[rel] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                key = f"{rel}:{node.name}"
                functions[key] = max(functions.get(key, 0), node.end_lineno - start + 1)
    return modules, functions


def test_no_module_over_450_lines():
    modules, _ = _sizes()
    assert "manifest.py" in modules and "tensorrt/check.py" in modules  # the walk found the sources
    long = {m: n for m, n in modules.items() if n > MAX_MODULE_LINES and m not in LONG_MODULES}
    assert long == {}, "split the module into ones that say what they hold (or exempt it here, with the reason)"


def test_no_function_over_80_lines():
    _, functions = _sizes()
    assert "cli/export.py:export" in functions and "cli/bench.py:bench" in functions
    long = {f: n for f, n in functions.items() if n > MAX_FUNCTION_LINES and f not in LONG_FUNCTIONS}
    assert long == {}, "move the logic into helpers or the library (graph rewrites and numerical kernels: exempt here)"


def test_every_size_exemption_is_still_needed():
    """An exemption whose module or function is now within the limits (or gone) is removed from the list."""
    modules, functions = _sizes()
    stale = [m for m in LONG_MODULES if modules.get(m, 0) <= MAX_MODULE_LINES] + \
        [f for f in LONG_FUNCTIONS if functions.get(f, 0) <= MAX_FUNCTION_LINES]
    assert stale == [], "within the limits now: remove these from LONG_MODULES / LONG_FUNCTIONS"


# -- lazy imports: the one pattern (docs/architecture.md, "Lazy imports") ------------------------------------------
FRAMEWORKS = OPTIONAL | {"[onnx]", "[onnxruntime]", "[skimage]"}
# every module follows the rule but these, which still import some deploykit modules inside functions and leave
# the list as they are reworked (a name ending in "." is a package: all its modules)
NOT_YET_LAZY_RULE = ("deploykit.pipeline", "deploykit.precision.")


def _follows_lazy_rule(mod: str) -> bool:
    return not any(mod == p or (p.endswith(".") and (mod + ".").startswith(p)) for p in NOT_YET_LAZY_RULE)


def _unjustified_lazy_imports(g: dict[str, dict[str, str]], follows=_follows_lazy_rule) -> list[str]:
    """Each in-function import of a deploykit module by a module under the rule (``follows``) that neither keeps a
    framework out (the imported module's module-level closure imports none) nor breaks a cycle (that closure does
    not reach back)."""
    def closure(mod: str) -> set[str]:
        seen, todo = set(), [mod]
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += [d for d, how in g.get(m, {}).items() if how == "top" and not d.startswith("[")]
        return seen

    wrong = []
    for mod, deps in g.items():
        for dep, how in deps.items():
            if how != "lazy" or dep.startswith("[") or not follows(mod):
                continue
            reach = closure(dep)
            heavy = any(d in FRAMEWORKS for m in reach for d, h in g.get(m, {}).items() if h == "top")
            if not heavy and mod not in reach:
                wrong.append(f"{mod} imports {dep} inside a function")
    return wrong


def test_deploykit_modules_are_imported_lazily_only_to_keep_a_framework_out():
    g = module_graph.graph()
    assert _follows_lazy_rule("deploykit.runners.tensorrt") and _follows_lazy_rule("deploykit.cli")
    assert not _follows_lazy_rule("deploykit.precision.calibrate") and not _follows_lazy_rule("deploykit.pipeline")
    assert g["deploykit.models.registry"]["deploykit.models.zoo"] == "lazy"  # kept: zoo imports torch
    assert _unjustified_lazy_imports(g) == [], "import it at the top of the file (docs/architecture.md, Lazy imports)"
    broken = {**g, "deploykit.predict": {**g["deploykit.predict"], "deploykit.files": "lazy"}}
    assert _unjustified_lazy_imports(broken) == ["deploykit.predict imports deploykit.files inside a function"]


def test_every_lazy_rule_exemption_is_still_needed():
    """A module (or package) in NOT_YET_LAZY_RULE whose deploykit imports all follow the rule now leaves the list."""
    wrong = _unjustified_lazy_imports(module_graph.graph(), follows=lambda mod: True)
    stale = [p for p in NOT_YET_LAZY_RULE
             if not any(w.split()[0] == p or (p.endswith(".") and w.startswith(p)) for w in wrong)]
    assert stale == [], "these follow the lazy-import rule now: remove them from NOT_YET_LAZY_RULE"
