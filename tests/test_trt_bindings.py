"""Every TensorRT name deploykit uses exists in the real bindings of the versions it supports, checked offline.

NVIDIA's ``tensorrt-cu12-bindings`` wheels are pybind11 modules whose CUDA/TensorRT libraries are absent here, so
they cannot be imported; but their ``tensorrt.so`` holds every name pybind11 registers (class, method, property,
enum member) as a NUL-terminated string, and the package's ``__init__.py`` the pure-Python ones (``nptype``,
``__version__``). This test lists the names deploykit's TensorRT code uses -- ``trt.X`` / ``trt.X.Y`` and the
methods and properties of the objects TensorRT hands back (builder, network, config, profile, parser, runtime,
engine, context, timing cache), found with ``ast`` in every source file that touches ``trt`` -- and checks each
against the strings of each version, per code path:

* weakly typed, TensorRT 10.3 (JetPack 6): precision from the ``BuilderFlag`` the build plan sets;
* strongly typed, the latest 10.x and the current 11.x: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``.

The check is by name, not by owning class (a string does not say which class registered it), and a linker may
store a short name inside a longer one ("INT8" as the tail of "UINT8"), so a name that is the tail of a stored
string counts as present. It still catches what breaks users: a name removed or renamed in a version (11.x
dropped ``BuilderFlag.FP16``; a typo; an API from a newer release used on JetPack's 10.3).

The wheels (~1.3 MB each) are looked for in ``$DEPLOYKIT_TRT_WHEELS`` (default ``~/.cache/deploykit/
trt-bindings``) and fetched there with ``pip download`` when missing (the first CI run fills it); without them (no
network) the test skips with the reason. Run as a script to print the table of names per version.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WHEEL_DIR = Path(os.environ.get("DEPLOYKIT_TRT_WHEELS", Path.home() / ".cache" / "deploykit" / "trt-bindings"))
# (version, code path): JetPack 6's TensorRT, the latest 10.x, the current 11.x
VERSIONS = [("10.3.0", "weak"), ("10.16.1.11", "strong"), ("11.4.0.106", "strong")]

# classes TensorRT's own constructors return, and what its factory methods return (the objects deploykit holds)
CONSTRUCTORS = {"Builder", "OnnxParser", "Runtime", "Logger"}
FACTORIES = {
    "create_network": "INetworkDefinition", "create_builder_config": "IBuilderConfig",
    "create_optimization_profile": "IOptimizationProfile", "deserialize_cuda_engine": "ICudaEngine",
    "create_execution_context": "IExecutionContext", "get_input": "ITensor", "get_output": "ITensor",
    "create_timing_cache": "ITimingCache", "get_timing_cache": "ITimingCache", "get_error": "ParserError",
}


# ------------------------------------------------------------------------------------------ the names used


@dataclass
class Uses:
    module: dict[str, set[str]] = field(default_factory=dict)  # trt.X -> where
    members: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (class, name) -> where
    dynamic: set[str] = field(default_factory=set)  # getattr(trt.X, <computed>): X, resolved by the build plan

    def add(self, key, where: str) -> None:
        table = self.module if isinstance(key, str) else self.members
        table.setdefault(key, set()).add(where)


def _sources() -> list[Path]:
    files = sorted((ROOT / "src" / "deploykit").rglob("*.py")) + sorted((ROOT / "examples").rglob("*.py"))
    return [f for f in files if re.search(r"\btrt\.", f.read_text())]


def _key(node: ast.AST) -> str | None:
    """A variable's name, or the attribute name of ``self.engine`` / ``r.context`` (typed per file)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _trt_chain(node: ast.AST) -> list[str] | None:
    """``trt.A.B`` -> ["A", "B"]."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "trt" and parts:
        return parts[::-1]
    return None


def _value_type(value: ast.AST, types: dict[str, str]) -> str | None:
    """The TensorRT class of an expression: a typed name, ``trt.Builder(...)``, ``config.get_timing_cache()``."""
    if not isinstance(value, ast.Call):
        return types.get(_key(value)) if isinstance(value, (ast.Name, ast.Attribute)) else None
    chain = _trt_chain(value.func)
    if chain and len(chain) == 1 and chain[0] in CONSTRUCTORS:
        return chain[0]
    if isinstance(value.func, ast.Attribute) and value.func.attr in FACTORIES \
            and _value_type(value.func.value, types):
        return FACTORIES[value.func.attr]
    return None


def _file_uses(path: Path, uses: Uses) -> None:
    tree = ast.parse(path.read_text())
    rel = str(path.relative_to(ROOT))
    types: dict[str, str] = {}
    changed = True
    while changed:  # flow-insensitive: a name (or self.<attr>) bound to a TensorRT object anywhere in the file
        changed = False
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                found = _value_type(node.value, types)
                for target in node.targets:
                    if found and _key(target) and types.get(_key(target)) != found:
                        types[_key(target)] = found
                        changed = True
    called = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    for node in ast.walk(tree):
        where = f"{rel}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ClassDef):  # a subclass of a TensorRT interface overrides its callbacks by name
            for base in node.bases:
                chain = _trt_chain(base)
                if chain and len(chain) == 1:
                    for item in node.body:  # a method deploykit calls itself is its own, not a callback
                        if isinstance(item, ast.FunctionDef) and not item.name.startswith("_") \
                                and item.name not in called:
                            uses.add((chain[0], item.name), where)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
                and node.args and (chain := _trt_chain(node.args[0])) and len(chain) == 1:
            name = node.args[1] if len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                uses.add((chain[0], name.value), where)
            else:
                uses.dynamic.add(chain[0])
        if not isinstance(node, ast.Attribute):
            continue
        chain = _trt_chain(node)
        if chain is not None:
            uses.add(chain[0], where)
            for owner, name in zip(chain, chain[1:]):
                if owner[0].isupper() and not name.startswith("__"):  # a class and its member, not __version__.split
                    uses.add((owner, name), where)
        elif (owner := _value_type(node.value, types)) and not node.attr.startswith("__"):
            uses.add((owner, node.attr), where)


@lru_cache(maxsize=1)
def deploykit_uses() -> Uses:
    uses = Uses()
    for path in _sources():
        _file_uses(path, uses)
    return uses


def plan_flags(version: str) -> tuple[set[str], set[str], set[str]]:
    """(builder flags set -- required, network flags, builder flags cleared) over every engine precision."""
    from deploykit.tensorrt.plan import plan_build
    from deploykit.tensorrt.profile import EnginePrecision

    set_, network, clear = set(), set(), set()
    for precision in EnginePrecision:
        for fp16_remainder in (False, True):
            plan = plan_build(version, precision, fp16_remainder=fp16_remainder)
            set_ |= {f.value for f in plan.set_flags}
            network |= {f.value for f in plan.network_flags}
            clear |= {f.value for f in plan.clear_flags}
    return set_, network, clear


# ------------------------------------------------------------------------------------------ the bindings


def _fetch(version: str) -> Path | None:
    found = sorted(WHEEL_DIR.glob(f"tensorrt_cu12_bindings-{version}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", f"tensorrt-cu12-bindings=={version}", "--no-deps",
           "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
           "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "-d", str(WHEEL_DIR),
           "-q", "--disable-pip-version-check"]
    try:
        WHEEL_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = sorted(WHEEL_DIR.glob(f"tensorrt_cu12_bindings-{version}-*.whl"))
    return found[0] if found else None


@dataclass(frozen=True)
class Bindings:
    version: str
    strings: frozenset[str]  # NUL-terminated printable strings in tensorrt.so
    tails: frozenset[str]  # identifier tails of those strings (tail-merged literals)
    python_names: frozenset[str]  # top-level names the package's __init__.py defines

    def has(self, name: str) -> bool:
        return name in self.strings or name in self.tails or name in self.python_names


@lru_cache(maxsize=None)
def bindings(version: str) -> Bindings | None:
    wheel = _fetch(version)
    if wheel is None:
        return None
    with zipfile.ZipFile(wheel) as zf:
        so = zf.read("tensorrt_bindings/tensorrt.so")
        init = zf.read("tensorrt_bindings/__init__.py").decode()
    strings = {m.group().decode() for m in re.finditer(rb"[\x20-\x7e]{2,}(?=\x00)", so)}
    tails = {s[i:] for s in strings if len(s) < 64 and s.isidentifier() for i in range(1, len(s))}
    names = set()
    for node in ast.parse(init).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return Bindings(version, frozenset(strings), frozenset(tails), frozenset(names))


def missing_names(version: str, path: str) -> tuple[list[str], list[str], list[str]]:
    """(missing required names, missing optional ones, every name checked) for ``version`` on ``path``."""
    b = bindings(version)
    uses = deploykit_uses()
    required = {f"trt.{n}": n for n in uses.module}
    required |= {f"{cls}.{n}": n for cls, n in uses.members}
    set_flags, network_flags, clear_flags = plan_flags(version)
    required |= {f"BuilderFlag.{f}": f for f in set_flags}  # getattr(trt.BuilderFlag, f) without a default
    optional = {f"BuilderFlag.{f}": f for f in clear_flags}  # cleared only where present
    # a STRONGLY_TYPED network is the strong path; TensorRT 11 may drop the flag (every network strong there)
    (optional if version.startswith("11.") else required).update(
        {f"NetworkDefinitionCreationFlag.{f}": f for f in network_flags})
    assert (path == "strong") == bool(network_flags), f"TensorRT {version}: build plan is not {path}ly typed"
    return ([k for k, n in sorted(required.items()) if not b.has(n)],
            [k for k, n in sorted(optional.items()) if not b.has(n)], sorted(required) + sorted(optional))


# ------------------------------------------------------------------------------------------ the tests


def test_the_extraction_sees_deploykit_s_tensorrt_code():
    """A guard: an extraction that found nothing would pass every version."""
    uses = deploykit_uses()
    members = {f"{c}.{n}" for c, n in uses.members}
    for name in ("Builder.create_network", "IBuilderConfig.set_memory_pool_limit", "ICudaEngine.num_io_tensors",
                 "IExecutionContext.execute_async_v3", "IExecutionContext.set_input_shape",
                 "Runtime.deserialize_cuda_engine", "OnnxParser.parse_from_file", "IProgressMonitor.step_complete",
                 "ILogger.log", "MemoryPoolType.WORKSPACE", "TensorIOMode.INPUT", "ITimingCache.serialize"):
        assert name in members, f"{name} not found in {sorted(members)}"
    assert {"nptype", "Builder", "OnnxParser"} <= set(uses.module)
    assert {"BuilderFlag", "NetworkDefinitionCreationFlag"} <= uses.dynamic


@pytest.mark.parametrize(("version", "path"), VERSIONS, ids=[f"{v}-{p}" for v, p in VERSIONS])
def test_every_tensorrt_name_exists_in_the_bindings(version, path):
    if bindings(version) is None:
        pytest.skip(f"tensorrt-cu12-bindings=={version} is not in {WHEEL_DIR} and pip could not fetch it "
                    "(offline?): put the wheel there or set DEPLOYKIT_TRT_WHEELS")
    missing, _, checked = missing_names(version, path)
    assert len(checked) > 40
    assert not missing, f"TensorRT {version} ({path}ly typed) has no {', '.join(missing)}"


def test_the_check_can_fail():
    """The same strings reject a name TensorRT never had and one 11.x removed (the weak path's FP16 flag)."""
    b = bindings("11.4.0.106")
    if b is None:
        pytest.skip(f"tensorrt-cu12-bindings 11.4.0.106 is not in {WHEEL_DIR} and could not be fetched")
    assert b.has("execute_async_v3") and b.has("STRONGLY_TYPED") and b.has("nptype")
    assert not b.has("execute_async_v4") and not b.has("FP16")
    weak = bindings("10.3.0")
    if weak is not None:
        assert weak.has("FP16") and not weak.has("execute_async_v4")


if __name__ == "__main__":
    uses = deploykit_uses()
    for version, path in VERSIONS:
        if bindings(version) is None:
            print(f"TensorRT {version}: wheel not available")
            continue
        missing, optional, checked = missing_names(version, path)
        print(f"TensorRT {version} ({path}ly typed): {len(checked)} names checked; missing: {missing or 'none'}; "
              f"optional and absent: {optional or 'none'}")
    print("names:", ", ".join(sorted({f"trt.{n}" for n in uses.module} | {f"{c}.{n}" for c, n in uses.members})))
