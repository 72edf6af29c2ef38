"""What every benchmark row shares: the row record, robust timing and a description of the machine.

Absolute times on a shared 2-core machine swing with whatever else runs, so every row is a ratio
of two things measured in the same run, each as a median over repetitions.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class Row:
    """One line of the table; ``passed`` is None for a figure reported without a target."""

    id: str
    name: str
    shown: str  # the measured value as printed
    target: str
    passed: bool | None
    value: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # extra lines printed under the row


def now() -> float:
    return time.perf_counter()


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(fn: Callable[[], Any], reps: int, warmup: int = 1) -> list[float]:
    """Seconds of ``reps`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        started = now()
        fn()
        times.append(now() - started)
    return times


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Enough to tell whether two results.json files are comparable."""
    import mlflow
    import optuna
    import ray
    import torchvision

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "ray": ray.__version__,
        "mlflow": mlflow.__version__,
        "optuna": optuna.__version__,
        "platform": platform.platform(),
    }


def load_average() -> list[float]:
    """1/5/15-minute load: a load well above the core count means the timings were contended."""
    return [round(x, 2) for x in os.getloadavg()]


class StealMeter:
    """The share of CPU time the hypervisor gave to other guests ("steal" in /proc/stat), sampled
    in the background, so that epochs slowed by the host can be told from epochs slowed by what is
    being measured. On this VM steal came and went in bursts of 2–11 % that cost whole epochs up to
    15 % of their speed, more than the framework overhead row 1 measures. Reads nothing (and
    reports 0) where /proc/stat does not exist."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.samples: list[tuple[float, list[int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="steal-meter", daemon=True)

    def __enter__(self) -> "StealMeter":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            try:
                with open("/proc/stat") as f:
                    ticks = [int(x) for x in f.readline().split()[1:]]
            except (OSError, ValueError):
                return
            self.samples.append((time.time(), ticks))
            if self._stop.wait(self.interval):
                return

    def fraction(self, start: float, end: float) -> float:
        """Steal ÷ all CPU ticks between the samples nearest ``start`` and ``end`` (wall clock)."""
        if len(self.samples) < 2:
            return 0.0
        first = min(self.samples, key=lambda s: abs(s[0] - start))[1]
        last = min(self.samples, key=lambda s: abs(s[0] - end))[1]
        delta = [b - a for a, b in zip(first, last)]
        return delta[7] / sum(delta) if len(delta) > 7 and sum(delta) > 0 else 0.0
