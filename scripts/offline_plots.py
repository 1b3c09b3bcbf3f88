"""Write the HTML template that makes `dvc plots show` work offline: vega, vega-lite and vega-embed inlined.

DVC's default page loads the three libraries from a public CDN, so on a machine without internet the charts stay
blank. `make setup` installs pinned copies from the npm registry (see the Makefile) and runs this script, which
inlines their browser builds into `.dvc/plots/offline.html`; `.dvc/config` names that file as `plots.html_template`.
The template has no `{scripts}` placeholder, so DVC adds no CDN script tag to the page.

  python scripts/offline_plots.py --modules .venv/plots/node_modules --out .dvc/plots/offline.html
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ultraseg.io import write_text

LIBRARIES = ("vega", "vega-lite", "vega-embed")
"""In load order: vega-lite needs vega, vega-embed needs both."""

PAGE = """<!DOCTYPE html>
<html>
<head>
{refresh_tag}
<meta charset="utf-8">
<title>ultraseg plots</title>
<!-- vega, vega-lite and vega-embed inlined by scripts/offline_plots.py: this page loads nothing from the network -->
SCRIPTS
<style>
  body { font-family: sans-serif; }
  table { border-spacing: 15px; }
</style>
</head>
<body>
{plot_divs}
</body>
</html>
"""


def build(modules: Path) -> str:
    """The template text, with each library's minified browser build in its own script element."""
    scripts = []
    for name in LIBRARIES:
        build_file = modules / name / "build" / f"{name}.min.js"
        if not build_file.is_file():
            raise SystemExit(f"error: {build_file}: missing; install the pinned {name} first (make setup)")
        version = json.loads((modules / name / "package.json").read_text())["version"]
        # "</script" inside the code would end the element early; "<\/" means the same to JavaScript.
        code = build_file.read_text(encoding="utf-8").replace("</script", "<\\/script")
        scripts.append(f"<script>/* {name} {version} */\n{code}\n</script>")
    return PAGE.replace("SCRIPTS", "\n".join(scripts))


def main(argv: list[str] | None = None) -> None:
    summary, _, details = __doc__.partition("\n\n")
    ap = argparse.ArgumentParser(description=summary, epilog=details,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", type=Path, required=True, help="node_modules holding vega, vega-lite, vega-embed")
    ap.add_argument("--out", type=Path, default=Path(".dvc/plots/offline.html"), help="template to write")
    args = ap.parse_args(argv)
    write_text(args.out, build(args.modules))
    print(f"offline_plots: -> {args.out}")


if __name__ == "__main__":
    main()
