"""Every bench run appends what it printed to a dated file under bench/results/, with the
machine and the command that made it: the history lives there, the docs show the latest."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """The CPU model and the cores this process may use."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {len(os.sched_getaffinity(0))} CPUs"


class _Tee:
    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def recorded(name: str) -> Iterator[Path]:
    """Print as usual and append the same lines to ``bench/results/<date>-<name>.md``."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{time.strftime('%Y-%m-%d')}-{name}.md"
    command = " ".join(["python", *sys.argv])
    with path.open("a", encoding="utf-8") as out:
        out.write(
            f"\n## {time.strftime('%Y-%m-%d %H:%M %Z')}: {machine()}\n\n    {command}\n\n```\n"
        )
        out.flush()
        stdout, sys.stdout = sys.stdout, _Tee(sys.stdout, out)
        try:
            yield path
        finally:
            sys.stdout = stdout
            out.write("```\n")
