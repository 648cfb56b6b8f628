"""The alias writes that carry out the gate's decision, each recorded in the model's history
(registry/history.py), and the repair of the one race MLflow's registry leaves open: two
registers judged against the same champion at once, each promoting its own version.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genpipe.registry import champion, gate, history
from genpipe.registry.gate import CHAMPION
from genpipe.registry.versions import files_gone
from genpipe.tracking.lineage import TAG_AGAINST

log = logging.getLogger(__name__)

# two versions judged against the same champion within this many seconds of each other were
# registered at the same time: the race reconcile repairs
RACE_SECONDS = 600.0


@dataclass(frozen=True)
class Why:
    """What an alias change is recorded with (registry/history.py)."""

    reason: str
    metric: str
    values: dict[int, float | None]  # version -> the value the gate compared
    branch: str | None
    path: Path  # reports/<model>/registry_history.jsonl


def set_aliases(client: Any, name: str, aliases: gate.Aliases, why: Why) -> None:
    """In order (previous-champion before champion); setting one again changes nothing.
    Each alias that moves is recorded in the model's history."""
    held = {alias: int(v) for alias, v in client.get_registered_model(name).aliases.items()}
    for alias, version in aliases:
        if held.get(alias) != version:
            # recorded first: a pass cut short between the two leaves the change in the
            # history (the next pass finds the alias moved and records nothing)
            change = history.change(alias, version, held.get(alias), why.reason, why.metric,
                                    why.values, why.branch)  # fmt: skip
            history.record(client, name, [change], why.path)
            held[alias] = version
        client.set_registered_model_alias(name, alias, str(version))


def against(client: Any, name: str, verdict: gate.Decision) -> str:
    """TAG_AGAINST's value: the champion the gate read, how many champion changes genpipe
    had recorded then, and the decision. Two versions promoted over the same champion at
    the same count were judged at the same time: neither saw the other's promotion."""
    changes = sum(c.alias == CHAMPION for c in history.read(client, name))
    compared = (verdict.compared or {}).get("version")
    return json.dumps({"champion": compared, "changes": changes,
                       "decision": verdict.decision}, sort_keys=True)  # fmt: skip


def reconcile(client: Any, name: str, metric: str, policy: gate.Policy,
              history_path: Path) -> gate.Aliases:  # fmt: skip
    """Undo a race between two register processes (see gate.reconcile), and nothing else.
    The race is known by genpipe's own records, not derived from the metrics: the champion
    is one genpipe promoted (its alias history), its rivals are the versions that gates
    promoted over the same champion at the same count of changes (TAG_AGAINST), within
    RACE_SECONDS of it, and genpipe's last promotion is the champion's or a rival's. A
    champion an operator set (in the UI, or with set_registered_model_alias) is never moved
    here. Every process ends here after its own writes, so the last one to run sees all
    versions. Returns the aliases it moved."""
    current = champion.champion_version(client, name)
    judged = None if current is None else current.tags.get(TAG_AGAINST)
    if judged is None or "'" in judged:  # genpipe's JSON holds no quote: not its tag
        return ()
    set_by_genpipe = [c.version for c in history.read(client, name) if c.alias == CHAMPION]
    if int(current.version) not in set_by_genpipe:
        return ()  # the operator's choice
    held = champion.champion(client, name, metric)
    if held is None:  # the alias went in between
        return ()
    born = int(current.creation_timestamp or 0) / 1000
    rivals = [v for v in client.search_model_versions(
                  f"name = '{name}' AND tags.`{TAG_AGAINST}` = '{judged}'")
              if abs(int(v.creation_timestamp or 0) / 1000 - born) <= RACE_SECONDS]  # fmt: skip
    # genpipe's last promotion was this champion, or a rival's: two registers record their
    # promotions, then set the alias, in either order. Any other: the operator moved it back
    if set_by_genpipe[-1] not in {int(v.version) for v in rivals} | {int(current.version)}:
        return ()
    aliases = gate.reconcile(held, [champion.values(v) for v in rivals],
                             policy.min_improvement, policy.noise_z)  # fmt: skip
    best = next((v for v in rivals if aliases and int(v.version) == aliases[-1][1]), None)
    if best is None or files_gone(client, best) is not None:
        return ()  # a version whose files are gone is never made champion
    was = json.loads(judged).get("champion")
    reason = (f"v{best.version} beats champion v{held.version}: registers at the same "
              f"time promoted both over {f'v{was}' if was else 'no champion'}")  # fmt: skip
    log.warning("%s: %s; moving the alias", name, reason)
    values = {int(v.version): champion.values(v).value for v in rivals}
    set_aliases(client, name, aliases, Why(reason, metric, values, policy.branch, history_path))
    return aliases


def after_race(decision: dict[str, Any], moved: gate.Aliases, version: int) -> dict[str, Any]:
    """The record of this version's decision once reconcile moved aliases: it names the
    alias the version holds, so registry.json's decision and aliases agree."""
    took = [alias for alias, v in moved if v == version]
    if not took:
        return decision
    other = next((v for alias, v in moved if alias == CHAMPION and v != version), None)
    why = (f"; then v{other}, registered at the same time, took champion" if other
           else "; then champion, over the version a register at the same time promoted")
    return {**decision, "decision": took[-1], "reason": decision.get("reason", "") + why}
