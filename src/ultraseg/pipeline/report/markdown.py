"""Markdown pieces every section uses: tables, numbers that may be undefined, CIs and notes of runs left out."""

from __future__ import annotations


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)



def ci(m: dict) -> str:
    low, high = m["dice_ci95"]
    return f"{m['dice']:.4f} [{low:.3f}, {high:.3f}]"


def num(value, fmt: str = ".4f") -> str:
    return "–" if value is None or value != value else format(value, fmt)  # NaN: undefined (see README)



def missing_note(comp: dict, what: str = "Not run to the end in this comparison") -> str:
    missing = comp.get("missing") or []
    return f"\n{what}: {', '.join(missing)}.\n" if missing else ""


