"""Distinct physical pages of a process tree, from /proc/<pid>/pagemap (needs root).

PSS splits a shared page between the processes that map it, so a sum of PSS depends on how
many processes there are; what a tree really costs the machine is the number of distinct
physical pages (page frames) its processes have present, each counted once. Root reads the
page frame numbers (PFN) of every present page from /proc/<pid>/pagemap (bits 0-54 of each
64-bit entry, bit 63 "present"); a page swapped out has no frame and is not counted (the
benchmark machines have no swap).

`classify_child` splits a child's own pages (frames no other process of the tree has) by
where they come from: a copy of a page its parent (the supervisor) has at the same address
(copy-on-write after the fork) or a page the parent has no page at (new memory); with
`diff_words` it also reads both pages (/proc/<pid>/mem) and counts the 8-byte words that
differ, which tells a reference-count write (one or two words) from new data.
"""

from __future__ import annotations

import os
import struct
from array import array
from collections import Counter
from dataclasses import dataclass, field

PAGE = os.sysconf("SC_PAGE_SIZE")
PRESENT = 1 << 63
PFN_MASK = (1 << 55) - 1
MB = 1_000_000


@dataclass
class Mapping:
    start: int
    end: int
    perms: str
    name: str  # the file, [heap], [stack], or "" for anonymous memory


@dataclass
class Pages:
    """One process's present pages: virtual page number -> (PFN, mapping name)."""

    pid: int
    by_vpn: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)

    @property
    def pfns(self) -> set[int]:
        return set(self.by_vpn.values())


def mappings(pid: int) -> list[Mapping]:
    result = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in parts[0].split("-"))
            result.append(Mapping(start, end, parts[1], parts[5].strip() if len(parts) > 5
                                  else ""))
    return result


def pages(pid: int) -> Pages:
    """The present pages of `pid` (empty if it is gone)."""
    found = Pages(pid)
    try:
        maps = mappings(pid)
        handle = open(f"/proc/{pid}/pagemap", "rb", buffering=0)
    except OSError:
        return found
    with handle:
        for mapping in maps:
            if mapping.name == "[vsyscall]":
                continue
            first, count = mapping.start // PAGE, (mapping.end - mapping.start) // PAGE
            try:
                handle.seek(first * 8)
                raw = handle.read(count * 8)
            except OSError:
                continue
            entries = array("Q")
            entries.frombytes(raw[:len(raw) // 8 * 8])
            for offset, entry in enumerate(entries):
                if entry & PRESENT:
                    found.by_vpn[first + offset] = entry & PFN_MASK
                    found.names[first + offset] = mapping.name
    return found


def distinct_mb(all_pages: list[Pages]) -> float:
    """MB of distinct page frames over the processes."""
    frames: set[int] = set()
    for process in all_pages:
        frames |= process.pfns
    if frames == {0}:
        raise PermissionError("pagemap shows no frame numbers: run as root")
    return len(frames) * PAGE / MB


def own_frames(all_pages: list[Pages]) -> dict[int, set[int]]:
    """Per pid, the frames no other process of the list has."""
    seen: Counter = Counter()
    for process in all_pages:
        seen.update(process.pfns)
    return {p.pid: {f for f in p.pfns if seen[f] == 1} for p in all_pages}


@dataclass
class ChildPages:
    """Where one child's own pages come from (counts of pages)."""

    own: int = 0
    copied: int = 0  # the parent has a (different) page at the same address
    new: int = 0  # the parent has none there
    words_changed: Counter = field(default_factory=Counter)  # of copies: 1, 2, 3-8, 9-64, >64
    by_mapping: Counter = field(default_factory=Counter)  # own pages per mapping kind


def _kind(name: str) -> str:
    if not name:
        return "anonymous (pymalloc arenas, mmap)"
    if name == "[heap]":
        return "[heap] (malloc)"
    if name.startswith("["):
        return name
    return "files (libraries, data)"


def classify_child(child: Pages, parent: Pages, own: set[int],
                   diff_words: bool = False) -> ChildPages:
    result = ChildPages()
    mem = parent_mem = None
    if diff_words:
        try:
            mem = open(f"/proc/{child.pid}/mem", "rb", buffering=0)
            parent_mem = open(f"/proc/{parent.pid}/mem", "rb", buffering=0)
        except OSError:
            mem = parent_mem = None
    try:
        for vpn, pfn in child.by_vpn.items():
            if pfn not in own:
                continue
            result.own += 1
            result.by_mapping[_kind(child.names.get(vpn, ""))] += 1
            if vpn in parent.by_vpn:
                result.copied += 1
                if mem is not None:
                    result.words_changed[_changed_words(mem, parent_mem, vpn)] += 1
            else:
                result.new += 1
    finally:
        for handle in (mem, parent_mem):
            if handle is not None:
                handle.close()
    return result


def _changed_words(mem, parent_mem, vpn: int) -> str:
    try:
        mem.seek(vpn * PAGE)
        mine = mem.read(PAGE)
        parent_mem.seek(vpn * PAGE)
        theirs = parent_mem.read(PAGE)
    except OSError:
        return "unreadable"
    if len(mine) != PAGE or len(theirs) != PAGE:
        return "unreadable"
    fmt = f"{PAGE // 8}Q"
    changed = sum(a != b for a, b in zip(struct.unpack(fmt, mine), struct.unpack(fmt, theirs)))
    for limit, label in ((0, "0"), (1, "1"), (2, "2"), (8, "3-8"), (64, "9-64")):
        if changed <= limit:
            return label
    return ">64"
