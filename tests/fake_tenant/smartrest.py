"""SmartREST 2.0 CSV parsing, independent of ``c8ysim/``.

Owns the text format only: splitting a payload into lines and fields with the
quoting rules of ref §3.1 / §10.1, and checker rule 6 (an unquoted field must
not need quotes).  What the fields mean is in ``templates``.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class SrLine:
    """One parsed SmartREST line: field values plus whether each was quoted."""

    raw: str
    fields: list[str]
    quoted: list[bool]
    error: str | None = None

    @property
    def template(self) -> str:
        return self.fields[0] if self.fields else ""


class _LineBuilder:
    """A character-by-character reader that accumulates fields and lines.

    ``state`` is one of start | plain | quoted | after_quote (of the current
    field).
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines: list[SrLine] = []
        self.start = 0
        self.state = "start"
        self._new_line()

    def _new_line(self) -> None:
        self.fields: list[str] = []
        self.quoted: list[bool] = []
        self.cur: list[str] = []
        self.cur_quoted = False
        self.error: str | None = None

    def step(self, i: int) -> int:
        """Consume the character at ``i``; return the index of the next one."""
        ch = self.text[i]
        if self.state == "quoted":
            return self._step_quoted(i, ch)
        if ch == ",":
            self.end_field()
        elif ch == "\n":
            self.end_line(i)
        elif self.state == "start" and ch == '"':
            self.cur_quoted = True
            self.state = "quoted"
        else:
            self._plain_char(ch)
        return i + 1

    def _step_quoted(self, i: int, ch: str) -> int:
        """Inside quotes: ``""`` and ``\\"`` are one quote, a lone ``"`` ends."""
        if ch in '\\"' and self.text[i + 1:i + 2] == '"':
            self.cur.append('"')
            return i + 2
        if ch == '"':
            self.state = "after_quote"
        else:
            self.cur.append(ch)
        return i + 1

    def _plain_char(self, ch: str) -> None:
        if self.state == "after_quote":
            self.fail("text after closing quote")
        self.cur.append(ch)
        if self.state == "start":
            self.state = "plain"

    def end_field(self) -> None:
        self.fields.append("".join(self.cur))
        self.quoted.append(self.cur_quoted)
        self.cur = []
        self.cur_quoted = False
        self.state = "start"

    def end_line(self, end: int) -> None:
        self.end_field()
        raw = self.text[self.start:end]
        if raw != "":
            self.lines.append(SrLine(raw, self.fields, self.quoted, self.error))
        self.start = end + 1
        self._new_line()

    def fail(self, message: str) -> None:
        self.error = self.error or message

    def finish(self) -> list[SrLine]:
        if self.state == "quoted":
            self.fail("unterminated quoted field")
        if self.start < len(self.text):
            self.end_line(len(self.text))
        return self.lines


def parse_smartrest(text: str) -> list[SrLine]:
    """Split a payload into lines and fields, honouring double quotes.

    Inside quotes ``,`` and newlines are literal and both ``""`` and ``\\"``
    stand for one quote (ref §3.1 / §10.1).  Empty lines are skipped.
    """
    builder = _LineBuilder(text)
    i = 0
    while i < len(text):
        i = builder.step(i)
    return builder.finish()


def quoting_problems(line: SrLine) -> list[str]:
    """Checker rule 6: unquoted fields must not need quoting."""
    problems = []
    for pos, (value, quoted) in enumerate(zip(line.fields, line.quoted)):
        if quoted or value == "":
            continue
        if '"' in value:
            problems.append(f"field {pos} contains '\"' but is not quoted")
        if "\t" in value or "\r" in value:
            problems.append(f"field {pos} contains TAB/CR but is not quoted")
        if value != value.strip():
            problems.append(f"field {pos} has edge whitespace but is not quoted")
    return problems


def strip_trailing_empty(fields: list[str]) -> list[str]:
    """``100,,`` is the same as ``100`` (ref §3.1)."""
    out = list(fields)
    while len(out) > 1 and out[-1] == "":
        out.pop()
    return out
