"""Rules the test suite keeps about itself: no test depends on how busy the machine is."""
import ast
import pathlib

TESTS = pathlib.Path(__file__).parent


def _sources():
    return sorted(p for p in TESTS.glob("*.py") if p.name != pathlib.Path(__file__).name)


def test_no_hypothesis_deadline_is_set():
    """A deadline (ms per example) fails on a loaded machine; `deadline=None` only."""
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "deadline" and not (
                    isinstance(node.value, ast.Constant) and node.value.value is None):
                found.append(f"{path.name}:{node.value.lineno}")
    assert not found, f"hypothesis deadlines in {found}: use deadline=None (timings belong in bench/)"


def test_no_assertion_reads_the_clock():
    """An `assert` on an elapsed time is a benchmark, not a test: it belongs in bench/."""
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assert):
                text = ast.unparse(node.test)
                if any(clock in text for clock in ("perf_counter(", "time.time(", "monotonic(")):
                    found.append(f"{path.name}:{node.lineno}")
    assert not found, f"wall-clock assertions in {found}"
