"""dvc.lock, DVC's record of each stage as it last ran: its deps, params and outs with their
hashes. Read, never written: `dvc repro` writes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genpipe import yamlio

LOCK = Path("dvc.lock")


def stages(lock: Path = LOCK) -> dict[str, dict[str, Any]]:
    """Stage name (train@gan for a foreach stage) -> its entry, in the file's order; {} when
    there is no dvc.lock or it cannot be read (a stage that never ran has no entry)."""
    try:
        found = (yamlio.load(Path(lock).read_text()) or {}).get("stages")
    except (OSError, yamlio.YAMLError, AttributeError):
        return {}
    return found if isinstance(found, dict) else {}


def out_md5(entries: dict[str, dict[str, Any]], stage: str, out: Path) -> str | None:
    """The md5 dvc.lock records for `stage`'s output `out`, if any."""
    entry = entries.get(stage)
    outs = entry.get("outs") if isinstance(entry, dict) else None
    for entry in outs if isinstance(outs, list) else []:
        if isinstance(entry, dict) and Path(entry.get("path", "")) == Path(out):
            return str(entry["md5"]) if entry.get("md5") else None
    return None


def changed(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> list[str]:
    """The stages whose entry `after` differs from `before` (or is new), in `after`'s order:
    the stages a `dvc repro` between the two reads ran, each having succeeded (DVC writes a
    stage's entry once it has run)."""
    return [name for name, entry in after.items() if before.get(name) != entry]
