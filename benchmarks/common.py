"""Rows of the result table, medians and the time budget shared by every case."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    """One measured figure beside its baseline from the same run.

    `higher_is_better` flips how the ratio reads (throughput, MB/s); the ratio is
    always value / baseline. `target` is text printed beside the row, and `met`
    says whether the figure meets it (None: no target, or not measured).
    """

    section: str
    name: str
    value: float | None
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    target: str = ""
    met: bool | None = None
    samples: int = 0
    note: str = ""
    higher_is_better: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        return out


def skipped(section: str, name: str, reason: str, target: str = "") -> Row:
    return Row(section, name, None, "", target=target, note=f"skipped: {reason}")


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def timed(action: Callable[[], Awaitable[object]], runs: int, warmup: int = 1) -> list[float]:
    """Seconds per call of `action`, after `warmup` untimed calls."""
    for _ in range(warmup):
        await action()
    samples = []
    for _ in range(runs):
        begin = time.perf_counter()
        await action()
        samples.append(time.perf_counter() - begin)
    return samples


class Budget:
    """The suite's wall-clock budget: cases ask before starting optional work."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()
