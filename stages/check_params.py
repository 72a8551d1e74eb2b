"""Stage `check_params`: validate all of params.yaml whenever any value in it changes.

The other stages track only the keys they read, so a mistyped `dvc exp run --set-param
+train.epochz=3` would change no tracked value and rerun nothing. This stage tracks the whole
file, so such a run fails here with one line naming the key instead of silently succeeding.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from btseg.cli import run_stage
from btseg.config import load_params

log = logging.getLogger("stages.check_params")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    load_params(args.params)
    log.info("%s: valid", args.params)


if __name__ == "__main__":
    run_stage(main, sys.argv[1:])
