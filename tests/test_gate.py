"""The champion gate as a table: values in, aliases and reasons out; no server."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from genpipe.registry.gate import (
    CANDIDATE,
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    Version,
    candidate_alias,
    decide,
    needs_rescore,
    on_branch,
    reconcile,
    rescored,
)


def version(n: int, value: float | None, **kw) -> Version:
    values = {"metric": "fid", "backbone": "domain", "data_hash": "d", "weights": f"w{n}"}
    return Version(n, value=value, **{**values, **kw})


OLD = version(1, 2.0)
HAND_SET = Version(1)  # an alias set by hand on a version without genpipe's tags
NEW_DATA = version(2, 1.0, data_hash="e")
INCEPTION = version(2, 1.0, backbone="inception")
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
    "another reference (a retrained domain network), not re-scored":
        (version(2, 0.1, reference="r2"), replace(OLD, reference="r1"), False,
         CHALLENGER, CHALLENGED, "genpipe.reference_sha256 differ"),
    "champion re-scored against today's reference":
        (version(2, 1.0, reference="r2"),
         rescored(replace(OLD, reference="r1"), version(2, 1.0, reference="r2"), 1.5), False,
         CHAMPION, PROMOTED, "re-scored on today's reference"),
    "other metric": (version(2, 0.1, metric="mse"), OLD, False,
                     CHALLENGER, CHALLENGED, "genpipe.metric differ"),
    "force: another backbone, worse": (version(2, 9.0, backbone="inception"), OLD, True,
                                       CHAMPION, PROMOTED, "fid 9 vs champion v1"),
    "force: a worse version on the same data, not compared":
        (version(2, 3.0), OLD, True, CHAMPION, PROMOTED,
         "register.force: promoted without comparing (fid 3 vs champion v1's 2)"),
    "force: within the noise":
        (version(2, 1.9, std=0.5), replace(OLD, std=0.5), True, CHAMPION, PROMOTED,
         "register.force"),
    "force: the same weights as the champion":
        (version(2, 1.0, weights="w1"), OLD, True, CHALLENGER, CHALLENGED, "the same weights"),
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
    "champion re-scored on today's data, beaten":
        (NEW_DATA, rescored(OLD, NEW_DATA, 1.5), False, CHAMPION, PROMOTED,
         "fid 1 vs champion v1's 1.5 re-scored on today's data (it had 2 on its own)"),
    "champion re-scored on today's data, not beaten":
        (NEW_DATA, rescored(OLD, NEW_DATA, 0.9), False, CHALLENGER, CHALLENGED,
         "not better than champion v1's 0.9 re-scored on today's data"),
    "champion re-scored with today's backbone":
        (INCEPTION, rescored(OLD, INCEPTION, 1.5), False, CHAMPION, PROMOTED,
         "re-scored on today's backbone"),
    "champion unloadable": (NEW_DATA, replace(OLD, unloadable="OSError: no MLmodel"), False,
                            CHAMPION, PROMOTED,
                            "champion v1 cannot be loaded (OSError: no MLmodel): replaced"),
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
        assert verdict.compared["version"] == 1 and verdict.compared["value"] == champion.value
        was = {"value": 2.0, "data_hash": "d", "backbone": "domain"}
        assert verdict.compared.get("rescored_from") == (was if champion.rescored else None)


# candidate, champion -> whether the champion must be scored again to be compared
# fmt: off
RESCORE = {
    "no champion": (NEW_DATA, None, False),
    "same data and backbone": (version(2, 1.0), OLD, False),
    "other data": (NEW_DATA, OLD, True),
    "other backbone": (INCEPTION, OLD, True),
    "other reference, same data": (version(2, 1.0, reference="r2"),
                                   replace(OLD, reference="r1"), True),
    "a champion without a reference tag": (version(2, 1.0, reference="r2"), OLD, False),
    "other metric": (version(2, 1.0, data_hash="e", metric="mse"), OLD, False),
    "champion without a value": (NEW_DATA, HAND_SET, False),
    "the same weights": (version(2, 1.0, data_hash="e", weights="w1"), OLD, False),
    "the champion itself": (version(1, 2.0, data_hash="e"), OLD, False),
    "already re-scored": (NEW_DATA, rescored(OLD, NEW_DATA, 1.5), False),
}
# fmt: on


@pytest.mark.parametrize("case", RESCORE.values(), ids=RESCORE.keys())
def test_when_the_champion_is_scored_again(case):
    candidate, champion, expected = case
    assert needs_rescore(candidate, champion) is expected


# the gate's decision on the default branch -> the decision on another
# fmt: off
BRANCH = {
    "would become champion": (version(2, 1.0), OLD, "on merge it would become champion "
                              "(fid 1 vs champion v1's 2)"),
    "would be challenger": (version(2, 3.0), OLD, "on merge it would be challenger (fid 3 is "
                            "not better"),
    "would be the first champion": (version(2, 3.0), None, "would become champion (no champion"),
}
# fmt: on


@pytest.mark.parametrize("case", BRANCH.values(), ids=BRANCH.keys())
def test_a_branch_other_than_the_default_moves_only_its_own_alias(case):
    candidate, champion, phrase = case
    verdict = on_branch(decide(candidate, champion, 0.01, False), 2, "feature/lr-3e-4", "main")
    assert verdict.decision == CANDIDATE
    assert verdict.aliases == (("candidate-feature-lr-3e-4", 2),)
    assert verdict.reason.startswith("branch feature/lr-3e-4, not main: ")
    assert phrase in verdict.reason


def test_candidate_aliases_are_what_mlflow_accepts():
    assert candidate_alias("dependabot/pip/torch-2.13") == "candidate-dependabot-pip-torch-2-13"
    assert candidate_alias("Fix_Data") == "candidate-fix_data"
    assert candidate_alias("///") == "candidate-branch"


def test_the_record_is_what_registry_json_holds():
    record = decide(version(2, 1.0), OLD, 0.01, False).record()
    assert record == {"decision": CHAMPION, "compared": {"version": 1, "value": 2.0,
                      "std": None}, "reason": "fid 1 vs champion v1's 2"}  # fmt: skip


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


# the race's undo holds a version to the gate's noise rule too (register.noise_z 2): the
# gate kept it challenger, and reconcile must not promote it after all
# champion, versions -> aliases
# fmt: off
RECONCILE_NOISE = {
    "a gain inside the noise":
        (replace(OLD, std=0.3), [replace(OLD, std=0.3), replace(version(2, 1.5), std=0.3)], ()),
    "a gain outside the noise":
        (replace(OLD, std=0.1), [replace(OLD, std=0.1), replace(version(2, 1.5), std=0.1)],
         ((PREVIOUS_CHAMPION, 1), (CHAMPION, 2))),
    "a champion without a spread, a candidate within its own":
        (OLD, [OLD, replace(version(2, 1.5), std=0.3)], ()),
    "no spread known: min_improvement alone":
        (OLD, [OLD, version(2, 1.5)], ((PREVIOUS_CHAMPION, 1), (CHAMPION, 2))),
}
# fmt: on


@pytest.mark.parametrize("case", RECONCILE_NOISE.values(), ids=RECONCILE_NOISE.keys())
def test_reconcile_knows_the_noise(case):
    champion, versions, aliases = case
    assert reconcile(champion, versions, min_improvement=0.01, noise_z=2.0) == aliases


def test_the_gate_imports_no_mlflow():
    code = "import sys, genpipe.registry.gate; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr[-1000:]


# with register.noise_z 2: the gain must also exceed 2 x sqrt(std_new^2 + std_champion^2)
# candidate, champion -> decision, a phrase of the reason
# fmt: off
NOISE = {
    "a gain inside the noise": (version(2, 1.8, std=0.1), version(1, 2.0, std=0.1), CHALLENGER,
                                "fid 1.8 ± 0.1 vs champion v1's 2 ± 0.1: within the evaluation "
                                "noise (better by 0.2; the noise margin is 2 x 0.141 = 0.283)"),
    "a gain outside it": (version(2, 1.5, std=0.1), version(1, 2.0, std=0.1), CHAMPION,
                          "better by 0.5; the noise margin is 2 x 0.141 = 0.283"),
    "a champion without a recorded spread: the candidate's alone":
        (version(2, 1.8, std=0.05), version(1, 2.0), CHAMPION,
         "fid 1.8 ± 0.05 vs champion v1's 2: better by 0.2; the noise margin is 2 x 0.05 = 0.1"),
    "a champion without a spread, a noisy candidate":
        (version(2, 1.8, std=0.2), version(1, 2.0), CHALLENGER, "within the evaluation noise"),
    "neither has a spread": (version(2, 1.8), version(1, 2.0), CHAMPION, "no spread recorded"),
    "not better by min_improvement comes first":
        (version(2, 1.995, std=0.0), version(1, 2.0, std=0.0), CHALLENGER, "min_improvement"),
    "a re-scored champion, with today's spread":
        (version(2, 1.0, data_hash="e", std=0.1),
         rescored(version(1, 2.0, std=0.5), version(2, 1.0, data_hash="e"), 1.1, std=0.1),
         CHALLENGER, "champion v1's 1.1 ± 0.1 re-scored on today's data"),
}
# fmt: on


@pytest.mark.parametrize("case", NOISE.values(), ids=NOISE.keys())
def test_the_gate_promotes_only_a_gain_larger_than_the_noise(case):
    candidate, champion, decision, phrase = case
    verdict = decide(candidate, champion, min_improvement=0.01, force=False, noise_z=2.0)
    assert verdict.decision == decision, verdict.reason
    assert phrase in verdict.reason, verdict.reason
    assert verdict.compared["std"] == champion.std
    if "margin is" in verdict.reason:
        assert verdict.compared["margin"] > 0
