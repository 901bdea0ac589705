"""`slow` comes from a measurement: tests/record_durations.py reads a run's call times, tests/conftest.py marks the
tests over 30 s."""

import json
import subprocess
import sys

from conftest import DURATIONS, REPO, SLOW_S


def test_recorded_durations_become_the_slow_marker(tmp_path):
    report = tmp_path / "out.txt"
    report.write_text("============ slowest durations ============\n"
                      "198.43s call     tests/test_rounds.py::test_killed[a]\n"
                      "60.67s setup    tests/test_cards.py::test_demo\n"
                      "0.50s call     tests/test_cards.py::test_demo\n")
    junit = tmp_path / "j.xml"
    junit.write_text('<testsuites><testsuite><testcase classname="tests.test_rounds" name="test_killed[a]"/>'
                     '<testcase classname="tests.test_cards" name="test_demo"/></testsuite></testsuites>')
    out = subprocess.run([sys.executable, str(REPO / "tests" / "record_durations.py"), str(junit), "--report",
                          str(report)], capture_output=True, text=True, check=True).stdout
    # the shared fixture's 60 s setup is not the test's own cost
    assert json.loads(out) == {"tests/test_cards.py::test_demo": 0.5, "tests/test_rounds.py::test_killed[a]": 198.43}
    junit.write_text('<testsuites><testsuite><testcase classname="tests.test_cards" name="test_demo">'
                     '<failure/></testcase></testsuite></testsuites>')
    failed = subprocess.run([sys.executable, str(REPO / "tests" / "record_durations.py"), str(junit), "--report",
                             str(report)], capture_output=True, text=True)
    assert failed.returncode == 1 and "record durations from a green run" in failed.stderr


def test_the_slow_marker_is_exactly_the_measured_tests(request):
    measured = json.loads(DURATIONS.read_text())
    slow = {i for i, s in measured.items() if s > SLOW_S}
    assert "tests/test_rounds.py::test_two_rounds_killed_in_round_two_reward_resume_to_the_same_figures" in slow
    items = request.session.items
    marked = {i.nodeid for i in items if i.get_closest_marker("slow")}
    assert marked == slow & {i.nodeid for i in items}
