"""Step the wall clock of a process tree, not the host's: build and drive tests/clockshift.c.

`WallClock(directory)` compiles the LD_PRELOAD library (with the system's gcc) and creates the
offset file; `env` is what a process needs to run under it, and `step(seconds)` moves that
process tree's CLOCK_REALTIME by `seconds` at once, as an NTP step would, while the monotonic
clock and every sleep stay real. The host's clock and every process started without `env`
(the test itself, the fake tenant) are untouched.
"""

from __future__ import annotations

import mmap
import shutil
import struct
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("clockshift.c")
NS_PER_S = 1_000_000_000
_OFFSET = struct.Struct("=q")  # signed 64-bit nanoseconds, native byte order (the C reader's)


def build(directory: Path) -> Path:
    """Compile the library into `directory`; fails the test if gcc is missing or refuses."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    assert compiler, "gcc is needed for the wall-clock tests (make test installs it)"
    library = directory / "libclockshift.so"
    done = subprocess.run([compiler, "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o",
                           str(library), str(SOURCE), "-ldl"], capture_output=True, text=True)
    assert done.returncode == 0, f"building {SOURCE.name} failed:\n{done.stderr}"
    return library


class WallClock:
    """The shifted wall clock of the processes started with `env`."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.library = build(directory)
        self.path = directory / "clockshift.offset"
        self.path.write_bytes(_OFFSET.pack(0).ljust(mmap.PAGESIZE, b"\0"))
        self._file = open(self.path, "r+b")
        self._map = mmap.mmap(self._file.fileno(), mmap.PAGESIZE)
        self.env = {"LD_PRELOAD": str(self.library), "CLOCKSHIFT_FILE": str(self.path)}

    @property
    def offset_s(self) -> float:
        return _OFFSET.unpack_from(self._map, 0)[0] / NS_PER_S

    def set_offset(self, seconds: float) -> None:
        """Wall clock = real time + `seconds` in every process of the tree, from now on."""
        _OFFSET.pack_into(self._map, 0, round(seconds * NS_PER_S))

    def step(self, seconds: float) -> None:
        self.set_offset(self.offset_s + seconds)

    def close(self) -> None:
        self._map.close()
        self._file.close()
