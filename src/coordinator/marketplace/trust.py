"""Pure trust and reputation rules of the registry (domain-rules, "Cargos and the registry")."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

SEVERITIES = ("critical", "high", "medium", "low", "unknown")
MAX_HIGH_FOR_L1 = 5
L1_MIN_SUCCESSES = 100

REPUTATION_START = Decimal("1.0")
REPUTATION_MIN, REPUTATION_MAX = Decimal("0.0"), Decimal("5.0")
REPUTATION_DELTAS: dict[str, Decimal] = {
    "success": Decimal("0.01"),
    "fast": Decimal("0.005"),
    "positive_rating": Decimal("0.05"),
    "streak": Decimal("0.10"),
    "failure": Decimal("-0.10"),
    "timeout": Decimal("-0.05"),
    "cancel": Decimal("-0.02"),
    "complaint": Decimal("-0.20"),
    "critical_incident": Decimal("-0.50"),
}
STREAK_LENGTH = 100
# (decided) "faster than expected": done within a quarter of the Cargo's maximum duration.
FAST_FRACTION = 0.25


@dataclass(frozen=True)
class Finding:
    """One vulnerability in one package of an image, as a scanner reported it."""

    id: str  # CVE-…, GHSA-…, or the advisory's own id
    package: str
    installed_version: str
    severity: str  # one of SEVERITIES
    fixed_versions: tuple[str, ...] = ()
    ecosystem: str | None = None
    aliases: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "package": self.package,
            "installed_version": self.installed_version,
            "severity": self.severity,
            "fixed_versions": list(self.fixed_versions),
            "ecosystem": self.ecosystem,
            "aliases": list(self.aliases),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        return cls(
            id=str(data["id"]),
            package=str(data["package"]),
            installed_version=str(data.get("installed_version", "")),
            severity=normalize_severity(data.get("severity")),
            fixed_versions=tuple(data.get("fixed_versions") or ()),
            ecosystem=data.get("ecosystem"),
            aliases=tuple(data.get("aliases") or ()),
        )

    @property
    def identity(self) -> tuple[str, str]:
        """What two scanners must agree on: the vulnerability (its CVE when known) in the package."""
        cve = next((a for a in (self.id, *self.aliases) if a.startswith("CVE-")), self.id)
        return cve, self.package.lower()


def normalize_severity(value: Any) -> str:
    text = str(value or "").strip().lower()
    if text == "moderate":
        return "medium"
    if text in ("negligible",):
        return "low"
    return text if text in SEVERITIES else "unknown"


def severity_counts(findings: Iterable[Finding]) -> dict[str, int]:
    counts = dict.fromkeys(SEVERITIES, 0)
    for finding in findings:
        counts[finding.severity] += 1
    return counts


def merge_findings(per_scanner: Mapping[str, list[Finding]]) -> list[Finding]:
    """The union over scanners, one finding per (vulnerability, package), at its highest severity."""
    best: dict[tuple[str, str], Finding] = {}
    for findings in per_scanner.values():
        for finding in findings:
            key = finding.identity
            held = best.get(key)
            if held is None or SEVERITIES.index(finding.severity) < SEVERITIES.index(held.severity):
                best[key] = finding
    return sorted(best.values(), key=lambda f: (SEVERITIES.index(f.severity), f.id, f.package))


def disagreements(per_scanner: Mapping[str, list[Finding]]) -> list[dict[str, Any]]:
    """Findings that some completed scanners report and others do not (shown to the reviewer)."""
    if len(per_scanner) < 2:
        return []
    seen = {name: {f.identity for f in findings} for name, findings in per_scanner.items()}
    everything = set().union(*seen.values())
    out = []
    for identity in sorted(everything):
        found_by = sorted(name for name, ids in seen.items() if identity in ids)
        if len(found_by) != len(seen):
            missed = sorted(set(seen) - set(found_by))
            out.append({"id": identity[0], "package": identity[1], "found_by": found_by, "missed_by": missed})
    return out


def max_trust_by_findings(counts: Mapping[str, int]) -> tuple[int, str | None]:
    """The highest trust level the findings allow, and why not higher: critical blocks L1+, more than
    five high block L1, any high blocks L2+."""
    if counts.get("critical", 0):
        return 0, f"{counts['critical']} critical finding(s) block L1 and above"
    high = counts.get("high", 0)
    if high > MAX_HIGH_FOR_L1:
        return 0, f"{high} high findings (more than {MAX_HIGH_FOR_L1}) block L1"
    if high:
        return 1, f"{high} high finding(s) block L2 and above"
    return 3, None


@dataclass(frozen=True)
class TrustFacts:
    """What a trust decision needs to know about one Cargo."""

    scanned: bool  # at least one scanner completed on the current image
    counts: Mapping[str, int]
    successes: int
    publisher_verified: bool  # tier Verified or above, with KYC
    signed: bool  # cosign signature by the publisher's key verified


def trust_blockers(level: int, facts: TrustFacts) -> list[str]:
    """Why a Cargo may not hold `level` (empty: it may). L3 is granted by an admin on top of L2."""
    reasons: list[str] = []
    if level <= 0:
        return reasons
    if not facts.scanned:
        reasons.append("no scanner completed on the current image")
    allowed, why = max_trust_by_findings(facts.counts)
    if level > allowed and why:
        reasons.append(why)
    if not facts.publisher_verified:
        reasons.append("the publisher is not Verified (KYC) or above")
    if level == 1 and facts.successes < L1_MIN_SUCCESSES:
        reasons.append(f"{facts.successes} successful jobs (L1 needs {L1_MIN_SUCCESSES})")
    if level >= 2 and not facts.signed:
        reasons.append("no verified cosign signature of the image digest by the publisher's key")
    return reasons


def clamp_reputation(value: Decimal) -> Decimal:
    return max(REPUTATION_MIN, min(REPUTATION_MAX, value))


def reputation_events_for_job(
    to_state: str, error: str | None, duration_s: float | None, max_duration_s: int
) -> list[str]:
    """The reputation events a finished job gives its Cargo. Dead-lettered jobs (lost Islands) and
    consumer-side failures are not the Cargo's doing and count nothing."""
    if to_state == "succeeded":
        events = ["success"]
        if duration_s is not None and duration_s <= max_duration_s * FAST_FRACTION:
            events.append("fast")
        return events
    if to_state == "timeout":
        return ["timeout"]
    if to_state == "cancelled":
        return ["cancel"]
    if to_state == "failed" and not (error or "").startswith("dead-lettered"):
        return ["failure"]
    return []


@dataclass(frozen=True)
class ReputationFacts:
    score: Decimal
    trust_level: int
    success_rate: float | None  # over the window; None without finished jobs
    complaints_24h: int
    complaints_7d: int


@dataclass(frozen=True)
class ReputationActions:
    warn: list[str]
    flag: bool
    demote_to: int | None
    suspend: str | None


WARN_SCORE, DEMOTE_SCORE, SUSPEND_SCORE = Decimal("1.5"), Decimal("1.0"), Decimal("0.5")
WARN_SUCCESS_RATE, DEMOTE_SUCCESS_RATE = 0.90, 0.80
FLAG_COMPLAINTS_24H, SUSPEND_COMPLAINTS_7D = 3, 10


def reputation_actions(facts: ReputationFacts) -> ReputationActions:
    """The hourly worker's decisions for one Cargo (domain-rules)."""
    warn = []
    if facts.score < WARN_SCORE:
        warn.append(f"reputation {facts.score:.2f} is below {WARN_SCORE}")
    if facts.success_rate is not None and facts.success_rate < WARN_SUCCESS_RATE:
        warn.append(f"success rate {facts.success_rate:.0%} is below {WARN_SUCCESS_RATE:.0%}")
    demote_to: int | None = None
    if facts.success_rate is not None and facts.success_rate < DEMOTE_SUCCESS_RATE and facts.trust_level > 0:
        demote_to = 0
    elif facts.score < DEMOTE_SCORE and facts.trust_level > 0:
        demote_to = facts.trust_level - 1
    suspend = None
    if facts.score < SUSPEND_SCORE:
        suspend = f"reputation {facts.score:.2f} fell below {SUSPEND_SCORE}"
    elif facts.complaints_7d >= SUSPEND_COMPLAINTS_7D:
        suspend = f"{facts.complaints_7d} complaints in 7 days"
    return ReputationActions(
        warn=warn, flag=facts.complaints_24h >= FLAG_COMPLAINTS_24H, demote_to=demote_to, suspend=suspend
    )
