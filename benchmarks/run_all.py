"""Run every benchmark (`make bench`): each `benchmarks/*.py` except helpers, one after the
other so they do not compete for the machine, passing `--quick` through.

    .venv/bin/python benchmarks/run_all.py [--quick]

Each benchmark prints its table and, last, one JSON line; this collects those lines and
prints them again at the end, one per benchmark. Exits non-zero if a benchmark crashed
(a target not met is reported, not an error).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Final

import common

_NOT_BENCHMARKS: Final = frozenset({"run_all.py", "common.py", "ingest_noop.py"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small version of each")
    parser.add_argument("names", nargs="*", help="only these benchmarks (e.g. ingest)")
    args = parser.parse_args()
    scripts = sorted(
        p
        for p in common.BENCH_DIR.glob("*.py")
        if p.name not in _NOT_BENCHMARKS and not p.name.startswith("_")
    )
    if args.names:
        scripts = [p for p in scripts if p.stem in args.names]
    results: list[dict[str, object]] = []
    failed: list[str] = []
    for script in scripts:
        common.progress(f"== {script.stem} ==")
        argv = [sys.executable, str(script), *(["--quick"] if args.quick else [])]
        done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, cwd=common.REPO)
        sys.stdout.write(done.stdout)
        sys.stdout.flush()
        lines = done.stdout.strip().splitlines()
        try:
            record = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            record = None
        if done.returncode != 0 or not isinstance(record, dict):
            failed.append(script.stem)
            continue
        results.append(record)
    print("\nSummary")
    for record in results:
        print(f"  {record['benchmark']}: {'met' if record.get('met') else 'NOT met'}")
    for name in failed:
        print(f"  {name}: FAILED (no JSON line or non-zero exit)")
    for record in results:
        print(json.dumps(record))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
