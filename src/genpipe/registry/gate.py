"""The champion gate, decided purely: the values of a new version and of the current
`champion` in, the aliases to set and why out. No MLflow and no I/O here: registry.champion
reads the values from the registry, registry.aliases applies the decision.

A version better by at least `min_improvement` (relative; lower is better) becomes
`champion` and the old one `previous-champion`; any other gets `challenger`. A champion
evaluated on other data or with another backbone is compared as re-scored on today's
(registry.champion scores it again before the gate: `Rescore`); one that could not be
re-scored, or was evaluated on another metric, is never compared. `force` promotes the new
version without comparing at all (the same weights as the champion's excepted). A
champion whose values are unknown (an alias set by hand on a version without genpipe's
tags, whose run has no `eval/<metric>` either), or whose files cannot be loaded, is
replaced.

Only the default branch moves `champion` and `challenger`: a version registered from any
other branch takes an alias of its own (`candidate_alias`), and its decision says what
would happen on merge (`on_branch`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from genpipe.tracking.lineage import (
    TAG_BACKBONE,
    TAG_DATA_HASH,
    TAG_METRIC,
    TAG_REFERENCE,
    TAG_VALUE,
)

CHAMPION, PREVIOUS_CHAMPION, CHALLENGER = "champion", "previous-champion", "challenger"
CANDIDATE = "candidate"  # the decision on a branch other than the default: aliases its own

# versions differing in one of these are never compared: the tag that holds each
COMPARED_ON = {"backbone": TAG_BACKBONE, "data_hash": TAG_DATA_HASH,
               "reference": TAG_REFERENCE, "metric": TAG_METRIC}  # fmt: skip
RESCORED_ON = {TAG_BACKBONE, TAG_DATA_HASH, TAG_REFERENCE}  # scored again when these differ

Aliases = tuple[tuple[str, int], ...]  # (alias, version) to set, in this order


@dataclass(frozen=True)
class Policy:
    """When a version takes the champion alias: register's params and the branch."""

    min_improvement: float
    force: bool
    branch: str | None  # None: unknown (no git, a detached HEAD): the default's rules
    default_branch: str  # register.default_branch
    # a registered version's metrics on today's data (registry.rescore.Scorer); None: a
    # champion of other data or another backbone is not compared
    score: Callable[[Path], dict[str, Any]] | None = None
    noise_z: float = 0.0  # register.noise_z: the gain must exceed this many combined stds

    @property
    def on_default(self) -> bool:
        """Whether this register may move champion and challenger."""
        return self.branch is None or self.branch == self.default_branch


@dataclass(frozen=True)
class Rescore:
    """A champion scored again on today's reference: its recorded values before."""

    value: float
    data_hash: str | None
    backbone: str | None

    def record(self) -> dict[str, Any]:
        return {"value": self.value, "data_hash": self.data_hash, "backbone": self.backbone}


@dataclass(frozen=True)
class Version:
    """What the gate knows of one model version; None where the version does not say."""

    version: int
    metric: str | None = None
    value: float | None = None  # of the primary metric; lower is better
    backbone: str | None = None
    data_hash: str | None = None
    weights: str | None = None  # SHA-256 of the weights directory
    reference: str | None = None  # SHA-256 of the reference.json it was evaluated against
    hand_set: bool = False  # without genpipe's tags: its values, if any, are its run's
    rescored: Rescore | None = None  # value, data and backbone are today's, not its tags'
    unloadable: str | None = None  # why its files could not be loaded to re-score it
    std: float | None = None  # the value's evaluation noise (<metric>_std); None: unknown


@dataclass(frozen=True)
class Decision:
    decision: str  # the alias the new version takes: CHAMPION or CHALLENGER
    reason: str
    compared: dict[str, Any] | None = None  # the champion compared with: version, value
    aliases: Aliases = ()  # the writes that carry it out

    def record(self) -> dict[str, Any]:
        """For registry.json."""
        return {"decision": self.decision, "compared": self.compared, "reason": self.reason}


def needs_rescore(candidate: Version, champion: Version | None) -> bool:
    """Whether the champion must be scored again to be compared with `candidate`: it has a
    value of the same metric, taken on other data or with another backbone."""
    if champion is None or champion.value is None or champion.version == candidate.version:
        return False
    if champion.metric != candidate.metric or champion.weights == candidate.weights:
        return False
    return bool(RESCORED_ON & set(differs(candidate, champion)))


def rescored(champion: Version, candidate: Version, value: float,
             std: float | None = None) -> Version:  # fmt: skip
    """The champion with `value` (and its spread), its score on the candidate's data and
    backbone."""
    was = Rescore(champion.value, champion.data_hash, champion.backbone)  # type: ignore[arg-type]
    return replace(champion, value=value, std=std, data_hash=candidate.data_hash,
                   backbone=candidate.backbone, reference=candidate.reference,
                   rescored=was)  # fmt: skip


def differs(version: Version, champion: Version) -> list[str]:
    """The tags on which `version` and `champion` differ; one the champion lacks is not held
    against the version (a champion set by hand has no backbone tag, say)."""
    return [
        tag
        for key, tag in COMPARED_ON.items()
        if getattr(champion, key) is not None and getattr(version, key) != getattr(champion, key)
    ]


def beats(value: float, champion_value: float, min_improvement: float) -> bool:
    return value <= champion_value * (1.0 - min_improvement)


def noise(candidate: Version, champion: Version) -> float | None:
    """The combined evaluation noise of the two values, sqrt(std_a^2 + std_b^2), of the
    spreads that are known (a champion registered before spreads has none: the candidate's
    alone counts); None when neither is."""
    known = [v.std for v in (candidate, champion) if v.std is not None]
    return float(sum(s * s for s in known) ** 0.5) if known else None


def _figure(version: Version) -> str:
    return f"{version.value:.6g}" + (f" ± {version.std:.2g}" if version.std is not None else "")


def decide(
    candidate: Version,
    champion: Version | None,
    min_improvement: float,
    force: bool,
    noise_z: float = 0.0,
) -> Decision:
    """The aliases `candidate` (a new version, all values known) and the champion take. It
    becomes champion when better by `min_improvement` and by more than `noise_z` times the
    combined evaluation noise of the two values (noise())."""
    if champion is None:
        return Decision(CHAMPION, "no champion yet", aliases=((CHAMPION, candidate.version),))
    if champion.version == candidate.version:  # a pass cut short after its gate
        return Decision(CHAMPION, "already champion")
    old = f"champion v{champion.version}"
    compared: dict[str, Any] = {"version": champion.version, "value": champion.value,
                                "std": champion.std}  # fmt: skip
    if champion.rescored is not None:
        compared["rescored_from"] = champion.rescored.record()
    promote = ((PREVIOUS_CHAMPION, champion.version), (CHAMPION, candidate.version))
    challenge = ((CHALLENGER, candidate.version),)
    if champion.unloadable is not None:
        reason = f"{old} cannot be loaded ({champion.unloadable}): replaced"
        return Decision(CHAMPION, reason, compared, promote)
    if champion.value is None:
        reason = (
            f"{old} has no {candidate.metric} to compare with (no {TAG_VALUE} tag, as on "
            f"an alias set by hand, and no eval/{candidate.metric} on its run): replaced"
        )
        return Decision(CHAMPION, reason, compared, promote)
    if champion.weights is not None and champion.weights == candidate.weights:
        return Decision(CHALLENGER, f"the same weights as {old}", compared, challenge)
    different = differs(candidate, champion)
    if force:  # register.force: promoted without comparing, whatever the figures say
        figures = (f"{candidate.metric} {_figure(candidate)} vs {old}"
                   + (f"'s {_figure(champion)}" if not different else
                      f" ({', '.join(different)} differ)"))  # fmt: skip
        return Decision(CHAMPION, f"register.force: promoted without comparing ({figures})",
                        compared, promote)  # fmt: skip
    if different:
        reason = (
            f"not compared with {old}: {', '.join(different)} differ "
            "(set register.force to promote anyway)"
        )
        return Decision(CHALLENGER, reason, compared, challenge)
    value = f"{candidate.metric} {_figure(candidate)}"
    old += f"'s {_figure(champion)}{_how_scored(champion)}"
    if not beats(candidate.value, champion.value, min_improvement):
        reason = (f"{value} is not better than {old} by register.min_improvement "
                  f"{min_improvement:g}")  # fmt: skip
        return Decision(CHALLENGER, reason, compared, challenge)
    gain, spread = champion.value - candidate.value, noise(candidate, champion)
    if noise_z == 0:
        return Decision(CHAMPION, f"{value} vs {old}", compared, promote)
    if spread is None:
        return Decision(CHAMPION, f"{value} vs {old} (no spread recorded)", compared, promote)
    margin = noise_z * spread
    compared["margin"] = margin
    said = f"better by {gain:.3g}; the noise margin is {noise_z:g} x {spread:.3g} = {margin:.3g}"
    if clears_noise(candidate, champion, noise_z):
        return Decision(CHAMPION, f"{value} vs {old}: {said}", compared, promote)
    reason = f"{value} vs {old}: within the evaluation noise ({said})"
    return Decision(CHALLENGER, reason, compared, challenge)


def _how_scored(champion: Version) -> str:
    """' re-scored on today's data (it had 2 on its own)', ' (its run's eval/fid: ...)'."""
    said = ""
    if champion.rescored is not None:
        was = champion.rescored
        what = [name for name, key in (("data", "data_hash"), ("backbone", "backbone"))
                if getattr(was, key) != getattr(champion, key)] or ["reference"]  # fmt: skip
        said += f" re-scored on today's {' and '.join(what)} (it had {was.value:.6g} on its own)"
    if champion.hand_set:
        said += f" (its run's eval/{champion.metric}: an alias set by hand)"
    return said


def candidate_alias(branch: str) -> str:
    """'candidate-<branch>', in the letters MLflow allows in an alias (feature/x ->
    candidate-feature-x)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", branch).strip("-").lower() or "branch"
    return f"{CANDIDATE}-{name}"[:255]


def on_branch(verdict: Decision, version: int, branch: str, default_branch: str) -> Decision:
    """The decision for a version registered from `branch`, not the default branch: the
    alias of its own, and what the gate says would happen on merge."""
    would = {CHAMPION: "would become champion", CHALLENGER: "would be challenger"}
    reason = (f"branch {branch}, not {default_branch}: on merge it {would[verdict.decision]} "
              f"({verdict.reason})")  # fmt: skip
    return Decision(CANDIDATE, reason, verdict.compared,
                    ((candidate_alias(branch), version),))  # fmt: skip


def clears_noise(candidate: Version, champion: Version, noise_z: float) -> bool:
    """Whether the candidate's gain over the champion exceeds `noise_z` times their combined
    evaluation noise (noise()); with noise_z 0 or no spread known, the gain always does."""
    spread = noise(candidate, champion)
    if noise_z == 0 or spread is None:
        return True
    return champion.value - candidate.value > noise_z * spread


def reconcile(champion: Version, versions: list[Version], min_improvement: float,
              noise_z: float = 0.0) -> Aliases:  # fmt: skip
    """Undo a race between two register processes: each decided against the champion it
    read, and the last alias write won. The best version comparable with the champion takes
    the alias when it beats it as the gate would have required: by min_improvement and
    past the noise (clears_noise). A champion of unknown value is left to the next gate,
    which replaces it."""
    if champion.value is None:
        return ()
    comparable = [v for v in versions if v.value is not None and not differs(v, champion)]
    if not comparable:
        return ()
    best = min(comparable, key=lambda v: (v.value, v.version))
    if best.version == champion.version or not beats(best.value, champion.value, min_improvement):
        return ()
    if not clears_noise(best, champion, noise_z):
        return ()
    return ((PREVIOUS_CHAMPION, champion.version), (CHAMPION, best.version))
