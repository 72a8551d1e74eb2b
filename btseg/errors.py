"""The pipeline's expected failures. Imports nothing of ours, so every module can use it."""

from __future__ import annotations


class PipelineError(Exception):
    """An expected failure (bad params, bad input file, no credentials).

    The message is one line a user can act on: it names the file or parameter at fault and
    what to do. Entry points print it without a traceback and exit non-zero.
    """


def one_line(error: BaseException, limit: int | None = None) -> str:
    """An exception's message on one line (whitespace collapsed), cut at `limit` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if limit is None or len(text) <= limit else text[:limit] + "..."
