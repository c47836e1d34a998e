"""Lines the platform acknowledges and then refuses (ref §3.4), chosen by a test.

Owns the rules armed with ``FakeTenant.reject_lines``: a predicate on the
client key and a line's fields (template ID first), the ``s/e`` answer, and
how many more lines a rule may take.  A matching line is valid as far as the
checker goes (no violation); it is simply not applied, its publish is
acknowledged as usual, and the answer goes to ``s/e`` like the platform's,
e.g. ``40,201,No static template for this message id`` (an older platform
without template 201, ref §10.6) or ``45,201,Value is not a number``.  Every
rejected line is kept per client for the test to compare with what the
device reports.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable

from .limits import ERR_NO_TEMPLATE

Predicate = Callable[[str, list[str]], bool]      # (client key, fields) -> reject?
Answer = Callable[[list[str]], str]               # fields -> the s/e line


@dataclasses.dataclass
class Rule:
    predicate: Predicate
    answer: Answer
    remaining: int | None          # None: no end


class LineRejections:
    """Armed rules and what they rejected; lives in the server thread."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.rejected: dict[str, list[str]] = collections.defaultdict(list)

    def add(self, predicate: Predicate, answer: Answer | str | None,
            count: int | None) -> None:
        self.rules.append(Rule(predicate, _answer(answer), count))

    def clear(self) -> None:
        self.rules.clear()

    def check(self, key: str, fields: list[str], raw: str) -> str | None:
        """The ``s/e`` answer if a rule rejects this line (and count it), else None."""
        for rule in self.rules:
            if rule.remaining == 0 or not rule.predicate(key, fields):
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
            self.rejected[key].append(raw)
            return rule.answer(fields)
        return None


def _answer(answer: Answer | str | None) -> Answer:
    """A callable answer; a string may name ``{template}``; None: code 40 (ref §9)."""
    if answer is None:
        return lambda fields: f"40,{fields[0]},{ERR_NO_TEMPLATE}"
    if isinstance(answer, str):
        text = answer
        return lambda fields: text.format(template=fields[0])
    return answer
