"""The fetch stage's work: the BUSI source (a folder, a .zip or a URL) and any extra labelled sources, normalised
into one raw set with a manifest that names each image's source."""

from __future__ import annotations

import re
from pathlib import Path

from ultraseg.data import busi, labelled
from ultraseg.errors import DataError
from ultraseg.params import FetchParams

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def run(params: FetchParams, out_dir: Path, cache_dir: Path) -> list[dict]:
    """The manifest rows of the images written to ``out_dir``; downloads are cached in ``cache_dir``."""
    with busi.opened(params.source, cache_dir, params.sha256, out_dir.parent) as root:
        primary = busi.source_name(params.source)
        items = busi.entries(root, primary)
        names = {primary: params.source}
        for spec in params.extra_sources:
            name, path = parse_source(spec)
            if name in names:
                raise DataError(f"fetch.extra_sources: two sources named {name!r} ({names[name]}, {path}); "
                                "name one with 'name=path'")
            names[name] = path
            items += labelled.entries(Path(path).expanduser(), name)
        return busi.write_raw(items, out_dir)


def parse_source(spec: str) -> tuple[str, str]:
    """``name=path`` or a bare path, named after its folder (a CSV file: the folder that holds it)."""
    name, sep, path = spec.partition("=")
    if not sep or "/" in name:
        path = spec
        where = Path(path).expanduser()
        name = (where.parent if where.suffix.lower() == ".csv" else where).resolve().name
    if not NAME.match(name):
        raise DataError(f"fetch.extra_sources: {spec!r}: a source name is letters, digits, '_', '.' and '-'")
    return name, path
