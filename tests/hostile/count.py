"""Count the hostile runs of issue 10 and how many deploykit handled cleanly.

    python tests/hostile/count.py                 # runs pytest on tests/hostile, then prints the counts
    python tests/hostile/count.py --junit r.xml   # counts an existing `pytest --junitxml r.xml` report

One test case (each parametrized id) is one hostile run: a CLI invocation on a crafted input, or one kill/race
scenario. A case is clean when it passed; the category is the test module (test_hostile_<category>.py).
Prints "hostile runs: N, clean: K", one line per category, then the cases that are not clean.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def run_pytest(junit: Path, extra: list[str]) -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "pytest", str(HERE), "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *extra]
    return subprocess.call(cmd, cwd=ROOT, env=env)


def count(junit: Path) -> tuple[dict[str, list[int]], list[str]]:
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    dirty = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        if not module.startswith("test_hostile_"):
            continue
        if case.find("skipped") is not None:
            continue
        category = module.removeprefix("test_hostile_")
        clean = case.find("failure") is None and case.find("error") is None
        per[category][0] += 1
        per[category][1] += clean
        if not clean:
            dirty.append(f"{module}::{case.get('name')}")
    return dict(per), dirty


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--junit", type=Path, help="count this junit xml instead of running pytest")
    parser.add_argument("--quiet", action="store_true", help="do not list the cases that are not clean")
    args, extra = parser.parse_known_args()
    junit = args.junit
    if junit is None:
        junit = Path(tempfile.mkdtemp(prefix="hostile-")) / "junit.xml"
        run_pytest(junit, extra)
    per, dirty = count(junit)
    total = sum(n for n, _ in per.values())
    clean = sum(k for _, k in per.values())
    print(f"hostile runs: {total}, clean: {clean}")
    for category, (n, k) in sorted(per.items()):
        print(f"  {category:<8} runs: {n:>3}, clean: {k:>3}")
    if dirty and not args.quiet:
        print("not clean:")
        for name in dirty:
            print(f"  {name}")
    return 0 if total and clean == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
