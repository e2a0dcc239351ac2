"""``adaptune`` command line: one module per command, each ``register(sub)`` + ``run(args) -> int``.

The commands only parse and print; the work is in the library. Every bad input ends in one line
``adaptune: error: ...`` naming the culprit and exit status 2 (``ADAPTUNE_DEBUG=1`` shows the traceback instead);
Ctrl-C during training saves a checkpoint and exits with 130, SIGTERM the same with 143.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..version import __version__
from . import compare, explain, fuse, plan, predict, serve, sweep, train
from . import eval as eval_command
from .common import adapter_config_from_args

__all__ = ["adapter_config_from_args", "build_parser", "main"]

COMMANDS = (train, fuse, eval_command, predict, explain, plan, compare, sweep, serve)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    from ..benchmark.command import add_bench_parser, run_bench

    parser = argparse.ArgumentParser(prog="adaptune", description="Bottleneck adapters for Transformers models.")
    parser.add_argument("--version", action="version", version=f"adaptune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    add_bench_parser(sub)
    sub.choices["bench"].set_defaults(func=run_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``adaptune`` command: the exit status."""
    from ..training.data.datasets import DataError
    from ..training.signals import EXIT_CODES, Terminated

    args = build_parser().parse_args(argv)
    # Transformers' load reports (e.g. "classifier.weight MISSING": expected for a new head) and its weight-loading
    # bars drown our own progress lines; keep its errors only.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return args.func(args)
    except Terminated:
        print("adaptune: terminated", file=sys.stderr)
        return EXIT_CODES[Terminated]
    except KeyboardInterrupt:
        print("adaptune: interrupted", file=sys.stderr)
        return EXIT_CODES[KeyboardInterrupt]
    except (DataError, ValueError, FileNotFoundError, KeyError, OSError) as err:
        if os.environ.get("ADAPTUNE_DEBUG"):  # the full traceback, for bug reports
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"adaptune: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
