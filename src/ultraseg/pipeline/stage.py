"""What every stage script shares: its command line and the loading of its params section."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ultraseg import params as params_mod
from ultraseg.errors import DataError


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` shows the stage's docstring; every stage takes ``--params``."""
    summary, _, details = (doc or "").strip().partition("\n")
    ap = argparse.ArgumentParser(description=summary, epilog=details.strip() or None,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    return ap


def parse(ap: argparse.ArgumentParser, argv: Sequence[str] | None = None):
    """Parse the command line and load the params file; bad params end the process with one clear line."""
    args = ap.parse_args(argv)
    try:
        return args, params_mod.load(args.params)
    except params_mod.ParamsError as err:
        sys.exit(f"error: {err}")


def fail_cleanly(main):
    """Run a stage's main, turning expected data and params errors and missing inputs into one line on stderr and
    exit code 1."""

    def wrapper(argv: Sequence[str] | None = None) -> None:
        try:
            main(argv)
        except (DataError, params_mod.ParamsError, FileNotFoundError) as err:
            sys.exit(f"error: {err}")

    wrapper.__doc__ = main.__doc__
    return wrapper
