"""Which deployable file a command runs: a deployment profile's, or any file the user names.

``--profile edge`` (the default) is the small int8 network, ``--profile accurate`` the teacher with its own rule
(:data:`ultraseg.runtime.model_files.PROFILES`); both are looked up in ``models/`` of the working directory, where
``dvc repro`` writes them. Naming a file instead (``--model FILE``, or serve's ``MODEL``) runs that file, and giving
both is refused by the parser.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ultraseg.runtime.model_files import DEFAULT_PROFILE, PROFILES, profile_file

PROFILE_HELP = (f"deployment profile whose file in models/ to run: edge (the small int8 network, {PROFILES['edge']}) "
                f"or accurate (the teacher, slower, {PROFILES['accurate']}); default: {DEFAULT_PROFILE}")


def add_arguments(ap: argparse.ArgumentParser, positional: bool = False) -> None:
    """Add ``--profile`` and, exclusive with it, ``--model FILE`` (or an optional positional ``MODEL``)."""
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--profile", choices=tuple(PROFILES), help=PROFILE_HELP)
    help_text = "a deployable ONNX file to run instead of a profile's"
    if positional:
        group.add_argument("model", nargs="?", type=Path, metavar="MODEL", help=help_text)
    else:
        group.add_argument("--model", type=Path, metavar="FILE", help=help_text)


def model_path(args: argparse.Namespace) -> Path:
    """The file the parsed ``args`` ask for: the named one, else the profile's (the default profile's without
    either)."""
    return args.model if args.model is not None else profile_file(args.profile or DEFAULT_PROFILE)
