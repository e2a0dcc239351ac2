"""pass@1: generated code runs in its own subprocess; right code passes, wrong code and hangs fail."""

from __future__ import annotations

from adaptune.training.codeexec import pass_at_1, truncate_completion
from adaptune.training.data.datasets import Example

PROBLEM = Example(
    text='def add(a, b):\n    """Return a + b."""\n',
    target="    return a + b\n",
    tests="def check(f):\n    assert f(2, 3) == 5\n    assert f(-1, 1) == 0\n",
    entry_point="add",
)


def test_right_wrong_and_hanging_code() -> None:
    assert pass_at_1([PROBLEM], ["    return a + b\n"]) == 1.0
    assert pass_at_1([PROBLEM], ["    return a - b\n"]) == 0.0
    assert pass_at_1([PROBLEM], ["    while True:\n        pass\n"], timeout=1.0) == 0.0
    assert pass_at_1([PROBLEM], ["    import sys; sys.exit(3)\n"]) == 0.0
    assert pass_at_1([PROBLEM, PROBLEM], ["    return a + b\n", "    return 0\n"]) == 0.5


def test_completion_is_cut_at_the_next_top_level_statement() -> None:
    text = "    return a + b\n\ndef other():\n    raise SystemExit(1)\n"
    assert truncate_completion(text) == "    return a + b\n"
    assert pass_at_1([PROBLEM], [text + "\nprint(1/0)\n"]) == 1.0
