"""The pipeline's expected failures, and how every command reports them (`run_stage`). Imports
nothing of ours, so every module can use it."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence


class PipelineError(Exception):
    """An expected failure (bad params, bad input file, no credentials).

    The message is one line a user can act on: it names the file or parameter at fault and
    what to do. Entry points print it without a traceback and exit non-zero.
    """


def one_line(error: BaseException, limit: int | None = None) -> str:
    """An exception's message on one line (whitespace collapsed), cut at `limit` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if limit is None or len(text) <= limit else text[:limit] + "..."


def run_stage(main: Callable[[Sequence[str]], None], argv: Sequence[str] | None = None) -> None:
    """Run a stage's `main`, turning expected failures into one line on stderr and exit code 1.

    A reader that closed stdout early (`bts-recipe --list | head -1`) ends the command quietly with
    141, the status a shell gives a command killed by SIGPIPE, as `ls | head` would.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # inside the try: a broken pipe often shows only when the buffer is written
    except BrokenPipeError:
        # Python's recipe (docs, signal module): point stdout at devnull so the flush at exit cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: no output was moved into place", file=sys.stderr)
        sys.exit(130)
