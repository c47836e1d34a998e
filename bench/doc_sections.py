"""Sections of docs/performance.md that different benchmarks regenerate.

A section runs from its `## ` heading to the next `## ` heading or the end of the file.
`bench_footprint.py` rewrites the file and keeps the sections it does not own (the savings
section, written by hand);
`bench_status.py` replaces its own section.
"""

from __future__ import annotations

from pathlib import Path

STATUS_HEADING = "## Status page under load"
SAVINGS_HEADING = "## Savings (issue 18)"  # written by hand, kept by bench_footprint.py


def _bounds(text: str, heading: str) -> tuple[int, int] | None:
    start = text.find(heading + "\n")
    if start < 0:
        return None
    end = text.find("\n## ", start + len(heading))
    return start, len(text) if end < 0 else end + 1


def section(text: str, heading: str) -> str | None:
    """The section under `heading` (heading included), or None."""
    bounds = _bounds(text, heading)
    return None if bounds is None else text[bounds[0]:bounds[1]]


def replace_section(path: Path, heading: str, body: list[str]) -> None:
    """Put `heading` and `body` in place of the old section, or append them."""
    text = path.read_text() if path.exists() else ""
    new = "\n".join([heading, "", *body]).rstrip("\n") + "\n"
    bounds = _bounds(text, heading)
    if bounds is None:
        before, after = (text.rstrip("\n") + "\n\n" if text else ""), ""
    else:
        before, after = text[:bounds[0]], text[bounds[1]:]
    path.write_text(before + new + ("\n" + after if after else ""))
