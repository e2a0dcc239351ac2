"""pass@1 for generated code: each program runs in its own Python subprocess with a timeout.

Generated code is untrusted. It runs isolated from this process (``python -I``, a fresh temporary working
folder, a wall-clock timeout, no stdin) — enough to survive crashes and infinite loops, not a sandbox
against hostile code. That is why ``adaptune eval`` only runs tests when asked (``--exec-tests``).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .data.example import Example

__all__ = ["STOP_SEQUENCES", "pass_at_1", "run_tests", "truncate_completion"]

# Where a HumanEval-style function body ends: the next top-level statement.
STOP_SEQUENCES: tuple[str, ...] = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```")


def truncate_completion(text: str) -> str:
    """Cut a completion at the first top-level statement after the function body."""
    cut = min((i for s in STOP_SEQUENCES if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def run_tests(program: str, timeout: float = 10.0) -> bool:
    """True if ``program`` exits with status 0 within ``timeout`` seconds."""
    with tempfile.TemporaryDirectory(prefix="adaptune-exec-") as tmp:
        path = Path(tmp) / "program.py"
        path.write_text(program, encoding="utf-8")
        try:
            done = subprocess.run(
                [sys.executable, "-I", str(path)],
                cwd=tmp,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0


def pass_at_1(examples: Sequence[Example], completions: Sequence[str], timeout: float = 10.0) -> float:
    """Share of problems whose prompt + truncated completion passes its tests (one sample each)."""
    passed = 0
    for example, completion in zip(examples, completions, strict=True):
        program = f"{example.text}{truncate_completion(completion)}\n\n{example.tests}\n"
        if example.entry_point:
            program += f"\ncheck({example.entry_point})\n"
        passed += run_tests(program, timeout)
    return passed / max(1, len(examples))
