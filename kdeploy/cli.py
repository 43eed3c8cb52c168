"""The `kdeploy` command: one subcommand per stage, each a thin layer over the stage's library function.

Exit status: 0 success; 1 a check that ran and failed (parity out of tolerance, a format that did not
convert); 2 bad usage or bad input, reported as one line without a traceback.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from kdeploy.common.errors import KdeployError
from kdeploy.common.extras import require_extra
from kdeploy.common.logs import configure_logging


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are a single line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full command line: every stage registers its own subcommand."""
    from kdeploy.demo import add_demo_parser
    from kdeploy.export.cli import add_export_parser, add_verify_parser
    from kdeploy.k8s_render import add_k8s_parser
    from kdeploy.loadtest.cli import add_loadtest_parser
    from kdeploy.serve.cli import add_configs_parser, add_serve_parser
    from kdeploy.train.cli import add_train_parser
    from kdeploy.tune.cli import add_tune_parser

    parser = OneLineParser(prog="kdeploy", description="Train, export, verify, serve and load-test Keras models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    add_train_parser(commands)
    add_export_parser(commands)
    add_verify_parser(commands)
    add_serve_parser(commands)
    add_configs_parser(commands)
    add_demo_parser(commands)
    add_loadtest_parser(commands)
    add_tune_parser(commands)
    add_k8s_parser(commands)
    return parser


def quiet_tensorflow(verbose: bool) -> None:
    """Quiet TensorFlow's C++ log unless verbose; must precede its import.

    The level covers what TensorFlow logs once it runs; the lines it prints while it is imported ignore it and are
    dropped by `kdeploy.common.native_log.import_tensorflow_quietly`, which reads the same setting.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `kdeploy` subcommand and return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits for --help (0) and usage errors (2)
        return int(exc.code or 0)
    quiet_tensorflow(args.verbose)
    configure_logging(logging.DEBUG if args.verbose else logging.WARNING, "text")
    # SIGTERM (a stopped container, a cancelled CI job) unwinds like Ctrl-C, so half-built versions are cleaned up.
    # The event remembers it: library code that swallows the KeyboardInterrupt still sees it at its next step.
    args.interrupted = threading.Event()
    signal.signal(signal.SIGTERM, functools.partial(_interrupt, args.interrupted))
    try:
        require_extra(args.command, getattr(args, "backend", None))
        return int(args.run(args))
    except KdeployError as exc:
        print(f"kdeploy {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"kdeploy {args.command}: interrupted", file=sys.stderr)
        return 130


def _interrupt(interrupted: threading.Event, signum: int, frame: object) -> None:
    interrupted.set()
    raise KeyboardInterrupt(signal.Signals(signum).name)


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
