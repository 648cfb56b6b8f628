"""The alias history: every alias change register makes (which version took which alias
from which, why, and both values), which MLflow does not keep (it holds only the current
alias).

Each change is a tag of the registered model, `genpipe.history.<UTC time>.<alias>.v<N>`,
whose
value is the change as JSON: the model's page in the MLflow UI lists them in order. Each
register also appends its changes to reports/<model>/registry_history.jsonl (not cached, as
registry.json), and `genpipe registry history <model>` prints the server's.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from genpipe.tracking.limits import TAG_VALUE_MAX

TAG_PREFIX = "genpipe.history."
# a change is a tag whose value is its JSON: the reason within it leaves room for the rest
REASON_MAX = TAG_VALUE_MAX - 3500


@dataclass(frozen=True)
class Change:
    time: str  # UTC, ISO 8601 to the microsecond
    alias: str
    version: int
    previous: int | None  # the version that held the alias before, if any
    reason: str
    metric: str | None
    value: float | None  # the version's value of the metric
    previous_value: float | None  # the previous holder's, as the gate compared it
    branch: str | None

    def tag(self) -> tuple[str, str]:
        """The registered model's tag that records it; keys sort in time order."""
        stamp = self.time.replace("-", "").replace(":", "")
        key = f"{TAG_PREFIX}{stamp}.{self.alias}.v{self.version}"
        return key, json.dumps(asdict(self), sort_keys=True)


_last_us = 0


def now() -> str:
    """UTC to the microsecond, later than the last one this process returned: the changes
    of one register keep their order in the tags' sorted keys."""
    global _last_us
    _last_us = max(time.time_ns() // 1000, _last_us + 1)
    seconds, us = divmod(_last_us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{us:06d}Z"


def change(alias: str, version: int, previous: int | None, reason: str, metric: str | None,
           values: dict[int, float | None], branch: str | None) -> Change:  # fmt: skip
    """A change at this moment; `values` maps versions to the values the gate compared."""
    return Change(now(), alias, version, previous, reason[:REASON_MAX], metric,
                  values.get(version), values.get(previous) if previous else None,
                  branch)  # fmt: skip


def record(client: Any, name: str, changes: list[Change], path: Path | None) -> None:
    """The changes as tags of registered model `name`, and appended to `path`'s lines."""
    for entry in changes:
        client.set_registered_model_tag(name, *entry.tag())
    if path is not None and changes:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(asdict(c), sort_keys=True) + "\n" for c in changes)


def read(client: Any, name: str) -> list[Change]:
    """The registered model's history, oldest first; a tag that is not a change is skipped."""
    tags = client.get_registered_model(name).tags
    found = []
    for key in sorted(k for k in tags if k.startswith(TAG_PREFIX)):
        try:
            found.append(Change(**json.loads(tags[key])))
        except (ValueError, TypeError):
            continue
    return found


def table(changes: list[Change]) -> str:
    """The history as a plain-text table, for a terminal."""
    if not changes:
        return "no alias changes recorded"

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.6g}"

    rows = [("time (UTC)", "alias", "version", "was", "value", "was", "branch", "reason")]
    rows += [(c.time[:19].replace("T", " "), c.alias, f"v{c.version}",
              f"v{c.previous}" if c.previous else "-", number(c.value),
              number(c.previous_value), c.branch or "-", c.reason)
             for c in changes]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    )
