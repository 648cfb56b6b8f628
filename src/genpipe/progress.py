"""Progress where a person waits: a tqdm bar when stderr is a terminal, and otherwise (CI,
`dvc repro` piped by `genpipe ci-retrain`, a log file) one formatted line per interval
through the `genpipe` logger, nanoGPT style:

    train gan: step 500/2000, loss_d 0.612, loss_g 1.234, 5,120 img/s, ETA 1m12s

Its own module, importing no other genpipe module: the training loops, the reference stage
and feature extraction all use it, and a module's imports are its stages' DVC deps.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)


def interactive() -> bool:
    """Whether stderr is a terminal: tqdm's own test under disable=None."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced, or closed
        return False


def duration(seconds: float) -> str:
    """'45s', '1m12s', '2h03m'."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def number(value: float) -> str:
    """Throughputs: '5,120' from 100 up, three significant digits below."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


class Progress:
    """`total` units of work from `initial` (a resumed run's step).

    On a terminal, a tqdm bar whose postfix `report` sets. Elsewhere, `report` logs one
    line (values, throughput, ETA), and so does `update` each time the work done passes a
    multiple of `every` units (0: only `report` logs): no per-step output in a log file.
    """

    def __init__(self, desc: str, total: int, initial: int = 0, unit: str = "step",
                 every: int = 0, leave: bool = True):  # fmt: skip
        self.desc, self.total, self.unit, self.every = desc, total, unit, every
        self.done = self.initial = initial
        self.started = time.perf_counter()
        self.bar = None
        if interactive():
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.every and self.done // self.every > (self.done - n) // self.every:
            self.report()

    def report(self, values: dict[str, float] | None = None,
               images_per_s: float | None = None) -> None:  # fmt: skip
        """Show the latest `values` (losses, say) and throughput: the bar's postfix on a
        terminal, else one log line. Without `images_per_s`, the throughput is this run's
        own, in units per second."""
        values = values or {}
        if self.bar is not None:
            postfix = {name: f"{value:.4g}" for name, value in values.items()}
            if images_per_s is not None:
                postfix["img_s"] = f"{images_per_s:.0f}"
            self.bar.set_postfix(postfix)
            return
        elapsed = time.perf_counter() - self.started
        done = self.done - self.initial  # by this run: a resumed run's speed is its own
        if self.unit == "step":
            parts = [f"step {self.done}/{self.total}"]
        else:
            parts = [f"{self.done:,}/{self.total:,} {self.unit}"]
        parts += [f"{name} {value:.4g}" for name, value in values.items()]
        if images_per_s is not None:
            parts.append(f"{number(images_per_s)} img/s")
        elif done and elapsed > 0:
            parts.append(f"{number(done / elapsed)} {self.unit}/s")
        if done and self.done < self.total:
            parts.append(f"ETA {duration((self.total - self.done) * elapsed / done)}")
        elif done:
            parts.append(f"done in {duration(elapsed)}")
        log.info("%s: %s", self.desc, ", ".join(parts))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
