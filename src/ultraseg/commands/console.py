"""ultraseg: use the deployable model on your own scans.

  ultraseg predict INPUT... --model FILE --out DIR   images, folders, DICOM and video, frame by frame
  ultraseg evaluate-folder DATA --model FILE --out DIR
                                                      score it on your own labelled scans
  ultraseg serve MODEL                                a local live viewer in the browser

Each subcommand lives in its own module, which adds its parser here and does its work there.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from ultraseg.commands import evaluate_folder, predict
    from ultraseg.commands.viewer import server

    ap = argparse.ArgumentParser(prog="ultraseg", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Run 'ultraseg COMMAND --help' for a command's options.")
    commands = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict.add_parser(commands)
    evaluate_folder.add_parser(commands)
    server.add_parser(commands)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
