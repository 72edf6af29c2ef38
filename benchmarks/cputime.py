"""CPU-seconds of a process tree over time, read from ``/proc``: row 1's CPU-time form.

Wall-clock throughput on a shared 2-core VM swings by more than the 5 % row 1 tests, because
other load takes turns on the cores; the CPU time a process tree spends per trained image hardly
depends on that. ``TreeCpu`` samples, every ``interval`` seconds, ``utime + stime`` of this
process and every descendant (Ray's daemons, the trial driver, Train's controller and helpers,
the workers; or the plain ranks), keeping each process's last value after it exits (at most one
interval of an exiting process's tail is lost). Processes whose command line contains one of
``exclude`` (the benchmark's MLflow server, which serves both sides' runs) are left out.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of ``pid``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


class TreeCpu:
    """Background sampler of the CPU seconds this process's tree has used."""

    def __init__(self, interval: float = 0.25, exclude: tuple[str, ...] = ("mlflow server",)) -> None:
        self.interval, self.exclude = interval, exclude
        self.root = os.getpid()
        self.last: dict[int, float] = {}  # pid → CPU seconds when last seen
        self.skipped: set[int] = set()
        self.samples: list[tuple[float, float]] = []  # (wall clock, tree CPU seconds so far)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-cpu", daemon=True)

    def __enter__(self) -> "TreeCpu":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def _excluded(self, pid: int) -> bool:
        if pid not in self.skipped:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                return False
            if any(marker in cmdline for marker in self.exclude):
                self.skipped.add(pid)
        return pid in self.skipped

    def sample(self) -> None:
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _stat(entry)
                if stat is not None:
                    stats[int(entry)] = stat
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        stack = [self.root]
        while stack:
            pid = stack.pop()
            if pid in stats and (pid == self.root or not self._excluded(pid)):
                self.last[pid] = stats[pid][1]
                stack += children.get(pid, [])
        self.samples.append((time.time(), sum(self.last.values())))

    def between(self, start: float, end: float) -> float:
        """Tree CPU seconds used between two wall-clock times (linear between samples)."""
        return self.at(end) - self.at(start)

    def at(self, when: float) -> float:
        s = self.samples
        if not s:
            return 0.0
        if when <= s[0][0]:
            return s[0][1]
        for (t0, c0), (t1, c1) in zip(s, s[1:]):
            if t0 <= when <= t1:
                return c0 + (c1 - c0) * (when - t0) / (t1 - t0) if t1 > t0 else c1
        return s[-1][1]
