"""The champion gate as a table: values in, aliases and reasons out; no server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from genpipe.registry.gate import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    Version,
    decide,
    reconcile,
)


def version(n: int, value: float | None, **kw) -> Version:
    values = {"metric": "fid", "backbone": "domain", "data_hash": "d", "weights": f"w{n}"}
    return Version(n, value=value, **{**values, **kw})


OLD = version(1, 2.0)
HAND_SET = Version(1)  # an alias set by hand on a version without genpipe's tags
PROMOTED = ((PREVIOUS_CHAMPION, 1), (CHAMPION, 2))
CHALLENGED = ((CHALLENGER, 2),)

# candidate, champion, force -> decision, aliases set, a phrase of the reason
# fmt: off
GATE = {
    "no champion": (version(2, 1.0), None, False, CHAMPION, ((CHAMPION, 2),), "no champion"),
    "better": (version(2, 1.0), OLD, False, CHAMPION, PROMOTED, "fid 1 vs champion v1's 2"),
    "worse": (version(2, 3.0), OLD, False, CHALLENGER, CHALLENGED, "not better"),
    "equal": (version(2, 2.0), OLD, False, CHALLENGER, CHALLENGED, "not better"),
    "within min_improvement":
        (version(2, 1.99), OLD, False, CHALLENGER, CHALLENGED, "min_improvement 0.01"),
    "another backbone": (version(2, 0.1, backbone="inception"), OLD, False,
                         CHALLENGER, CHALLENGED, "genpipe.backbone differ"),
    "other data": (version(2, 0.1, data_hash="e"), OLD, False,
                   CHALLENGER, CHALLENGED, "data.hash differ"),
    "other metric": (version(2, 0.1, metric="mse"), OLD, False,
                     CHALLENGER, CHALLENGED, "genpipe.metric differ"),
    "force: another backbone, worse": (version(2, 9.0, backbone="inception"), OLD, True,
                                       CHAMPION, PROMOTED, "fid 9 vs"),
    "force: a worse comparable":
        (version(2, 3.0), OLD, True, CHALLENGER, CHALLENGED, "not better"),
    "the same version": (version(1, 2.0), OLD, False, CHAMPION, (), "already champion"),
    "equal weights": (version(2, 1.0, weights="w1"), OLD, False,
                      CHALLENGER, CHALLENGED, "the same weights as champion v1"),
    "champion without its metric tag":
        (version(2, 9.0), HAND_SET, False, CHAMPION, PROMOTED, "replaced"),
    "hand-set champion, compared on its run's eval/fid":
        (version(2, 1.0), Version(1, "fid", 2.0, data_hash="d", hand_set=True), False,
         CHAMPION, PROMOTED, "its run's eval/fid"),
    "hand-set champion, better than the candidate":
        (version(2, 3.0), Version(1, "fid", 2.0, hand_set=True), False,
         CHALLENGER, CHALLENGED, "not better"),
    "hand-set champion's run on other data":
        (version(2, 1.0), Version(1, "fid", 2.0, data_hash="e", hand_set=True), False,
         CHALLENGER, CHALLENGED, "data.hash differ"),
}
# fmt: on


@pytest.mark.parametrize("case", GATE.values(), ids=GATE.keys())
def test_gate(case):
    candidate, champion, force, decision, aliases, phrase = case
    verdict = decide(candidate, champion, min_improvement=0.01, force=force)
    assert (verdict.decision, verdict.aliases) == (decision, aliases)
    assert phrase in verdict.reason
    if champion is not None and champion.version != candidate.version:
        assert verdict.compared == {"version": 1, "value": champion.value}


def test_the_record_is_what_registry_json_holds():
    record = decide(version(2, 1.0), OLD, 0.01, False).record()
    assert record == {"decision": CHAMPION, "compared": {"version": 1, "value": 2.0},
                      "reason": "fid 1 vs champion v1's 2"}  # fmt: skip


# champion, all versions -> aliases set
# fmt: off
RECONCILE = {
    # two registers raced: each beat v1, the worse one (v3) wrote the alias last
    "after a race": (version(3, 1.5), [OLD, version(2, 1.0), version(3, 1.5)],
                     ((PREVIOUS_CHAMPION, 3), (CHAMPION, 2))),
    "the best is champion": (version(2, 1.0), [OLD, version(2, 1.0), version(3, 1.5)], ()),
    "a better one within min_improvement": (OLD, [OLD, version(2, 1.99)], ()),
    "a better one of another backbone":
        (OLD, [OLD, version(2, 0.1, backbone="inception")], ()),
    "a tie does not move the alias":
        (version(3, 1.0), [OLD, version(2, 1.0), version(3, 1.0)], ()),
    "a champion lacking tags": (HAND_SET, [HAND_SET, version(2, 1.0)], ()),
    "only versions lacking tags": (HAND_SET, [HAND_SET, Version(2)], ()),
    "a hand-set champion's run value": (Version(1, "fid", 2.0, hand_set=True),
                                        [HAND_SET, version(2, 1.0)],
                                        ((PREVIOUS_CHAMPION, 1), (CHAMPION, 2))),
}
# fmt: on


@pytest.mark.parametrize("case", RECONCILE.values(), ids=RECONCILE.keys())
def test_reconcile(case):
    champion, versions, aliases = case
    assert reconcile(champion, versions, min_improvement=0.01) == aliases


def test_the_gate_imports_no_mlflow():
    code = "import sys, genpipe.registry.gate; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr[-1000:]
