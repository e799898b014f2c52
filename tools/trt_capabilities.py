"""Generate ``src/deploykit/tensorrt/capabilities_data.py`` from the ONNX-TensorRT parser's published operator
support matrices (``docs/operators.md`` in https://github.com/onnx/onnx-tensorrt, one per release branch).

    python tools/trt_capabilities.py 10.1=path/to/operators-10.1.md 10.15=path/to/operators-10.15.md

Each table keeps what the file publishes: the opset range of its header, the data types it names, and per operator
whether it is supported, its supported types and its restriction text (verbatim, for quoting). Where each file came
from (repository, ref, commit, date) and which TensorRT versions use which table (a version with no published
matrix uses the nearest earlier one, and says so) are set in SOURCES and TARGETS below; docs/tensorrt-check.md
explains them. The generated module is data only; deploykit/tensorrt/check.py reads it.
"""

from __future__ import annotations

import pprint
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "deploykit" / "tensorrt" / "capabilities_data.py"

# Where each published matrix was read (the files themselves stay out of this repository).
SOURCES = {
    "10.1": {"repo": "onnx/onnx-tensorrt", "ref": "release/10.1-GA (branch 10.1-GA)", "path": "docs/operators.md",
             "commit": "96e781103cfc4adf4a6bb557e94bac8e693f6f4c", "date": "2024-06-17",
             "note": "the 10.1 GA parser release (changelog: 2024-6-10); its header still reads 'TensorRT 10.0'"},
    "10.15": {"repo": "onnx/onnx-tensorrt", "ref": "main at the 10.15 GA release", "path": "docs/operators.md",
              "commit": None, "date": "2026-02-02",
              "note": "the 10.15 GA parser release (changelog: 2026-2-2); read from a stored copy of the file whose "
                      "commit was not recorded"},
}

# TensorRT versions deploykit checks against: the table each uses, the typing its builds use, and the platform.
# A version whose own matrix is not among SOURCES names the nearest earlier table and states the gap.
TARGETS = {
    "10.3": {"platform": "JetPack 6.x (Jetson Orin)", "typing": "weak"},
    "10.13": {"platform": "JetPack 7.0 (Jetson Thor)", "typing": "strong"},
    "10.15": {"platform": "desktop / server", "typing": "strong"},
    "10.16": {"platform": "JetPack 7.2 (Orin and Thor)", "typing": "strong"},
    "11.0": {"platform": "desktop / server", "typing": "strong-only"},
    "11.5": {"platform": "desktop / server; JetPack >= 7.2.2 (AGX Orin, Thor)", "typing": "strong-only"},
}

# What the parser changelog (docs/Changelog.md, same repository) says changed in a gap version's own release, for
# the reader of a verdict made with an earlier table. The table itself is not edited: it stays what was published.
CHANGELOG = {
    "10.3": ["10.2: minor changes to op importers for GRU and Squeeze",
             "10.3: added support for tensor `axes` inputs for Slice nodes"],
    "10.13": ["10.4: tensor `axes` for Pad; BlackmanWindow, HammingWindow, HannWindow",
              "10.5: real-valued STFT", "10.7: dynamic axes for Squeeze and Unsqueeze",
              "10.8: FP4 quantized types; dynamic axes for CumSum", "10.9: opset 21 GroupNorm; opset 18+ ScatterND",
              "10.10: UINT8 constants for QuantizeLinear / DequantizeLinear",
              "10.12: ellipses, diagonal and broadcasting in Einsum"],
    "10.16": ["10.16 parser notes are not in the stored changelog"],
    "11.0": ["11.0 (NVIDIA/TensorRT release notes): weak typing removed; parser added the Swish operator"],
    "11.5": ["11.5 (onnx-tensorrt release/11.5-GA notes): ONNX opset 25; Squeeze with the axis input omitted"],
}

_HEADER = re.compile(r"TensorRT\s+([0-9.]+)\s+supports operators in the inclusive range of opset\s+(\d+)\s+to opset\s+"
                     r"(\d+)", re.I)
_TYPES = re.compile(r"TensorRT supports the following ONNX data types:\s*(.+)")


def parse(text: str) -> dict:
    header = _HEADER.search(text)
    if header is None:
        raise SystemExit("no 'supports operators in the inclusive range of opset A to opset B' header")
    types = _TYPES.search(text)
    operators: dict[str, dict] = {}
    in_table = False
    for line in text.splitlines():
        if line.startswith("| Operator"):
            in_table = True
            continue
        if not in_table or not line.startswith("|") or set(line) <= set("|- "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name, supported = cells[0], cells[1] if len(cells) > 1 else ""
        op_types = [t.strip() for t in cells[2].split(",") if t.strip()] if len(cells) > 2 else []
        restriction = " ".join(c for c in cells[3:] if c).replace("<br />", " ").strip()
        if not supported.upper().startswith("Y"):
            op_types = []
            restriction = " ".join(c for c in cells[2:] if c).strip()  # "N | Not supported. ..."
        operators[name] = {"supported": supported.upper().startswith("Y"), "types": op_types,
                           **({"restriction": restriction} if restriction else {})}
    return {"header_version": header.group(1), "opset": [int(header.group(2)), int(header.group(3))],
            "types": [t.strip() for t in re.split(r",\s*(?:and\s+)?|\s+and\s+", types.group(1).strip()) if t.strip()]
            if types else [],
            "operators": operators}


def main(argv: list[str]) -> None:
    tables = {}
    for arg in argv:
        version, _, path = arg.partition("=")
        if version not in SOURCES:
            raise SystemExit(f"{version}: add its source to SOURCES first")
        tables[version] = {**parse(Path(path).read_text(encoding="utf-8")), "source": SOURCES[version]}
    ordered = sorted(tables, key=lambda v: tuple(map(int, v.split("."))))
    targets = {}
    for version, facts in TARGETS.items():
        key = tuple(map(int, version.split(".")))
        earlier = [t for t in ordered if tuple(map(int, t.split("."))) <= key]
        if not earlier:
            raise SystemExit(f"no published table at or before TensorRT {version}")
        table = earlier[-1]
        gap = None if table == version else (f"no operator matrix published for TensorRT {version} in the sources "
                                             f"read; the TensorRT {table} table is used")
        targets[version] = {**facts, "table": table, "gap": gap, "changelog": CHANGELOG.get(version, [])}
    body = pprint.pformat({"tables": tables, "targets": targets}, width=118, sort_dicts=True)
    OUT.write_text('"""Generated by tools/trt_capabilities.py from the ONNX-TensorRT operator support matrices: do not '
                   'edit.\n\nProvenance and gaps: docs/tensorrt-check.md."""\n\n'
                   f"DATA = {body}\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(tables)} tables, {len(targets)} targets)")


if __name__ == "__main__":
    main(sys.argv[1:])
