"""Each test's call time from a pytest JUnit XML report, as tests/durations.json (what tests/conftest.py marks
`slow` from). Run by `make test-durations` after a full parallel run, on an otherwise idle machine:

    python tests/record_durations.py runs/test-durations.xml > tests/durations.json

JUnit's ``time`` holds setup + call + teardown; a session fixture's setup (the tiny pipeline, built once per worker)
lands on whichever test first needs it, so the call times come from pytest's own ``--durations`` report instead when
it is given (``--report``): the ``call`` lines.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET


def nodeid(case) -> str:
    """A JUnit test case as a pytest node id (tests/test_x.py::test_name[param])."""
    return f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"


def call_times(report: str) -> dict[str, float]:
    """``call`` durations from pytest's ``--durations=0`` output."""
    line = re.compile(r"^\s*([0-9.]+)s call\s+(\S.*)$")
    return {m.group(2).strip(): float(m.group(1)) for row in report.splitlines() if (m := line.match(row))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("junit", help="pytest --junitxml report of the full run")
    parser.add_argument("--report", required=True, help="the same run's output with --durations=0")
    args = parser.parse_args()
    times = call_times(open(args.report).read())
    cases = list(ET.parse(args.junit).getroot().iter("testcase"))
    failed = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
    if failed:
        sys.exit(f"error: {len(failed)} test(s) failed in {args.junit}; record durations from a green run")
    json.dump({i: round(times.get(i, 0.0), 2) for i in sorted(map(nodeid, cases))}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
