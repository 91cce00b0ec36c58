"""Pure rules of the registry: the submission move table, spec validation, tiers, trust from findings,
reputation, OSV version ranges per ecosystem, and the Trivy/Grype report formats."""

from __future__ import annotations

from decimal import Decimal

import pytest
from univers.versions import DebianVersion, PypiVersion, SemverVersion

from coordinator.marketplace import submission_rules as rules
from coordinator.marketplace import trust
from coordinator.marketplace.osv import Package, affects, in_range
from coordinator.marketplace.scanners import ReportError, parse_grype_report, parse_trivy_report
from coordinator.marketplace.trust import Finding

DIGEST = "sha256:" + "a" * 64


def test_every_status_is_reachable_and_terminal_ones_have_no_moves() -> None:
    reachable = {rules.DRAFT} | {m.to_state for m in rules.MOVES.values()}
    assert reachable == set(rules.STATUSES)
    leaving = {s for m in rules.MOVES.values() for s in m.from_states}
    assert rules.PUBLISHED not in leaving and rules.REJECTED not in leaving
    assert rules.MOVES["approve"].from_states == (rules.IN_REVIEW,)
    assert rules.MOVES["publish"].from_states == (rules.APPROVED,)


def test_tier_limits() -> None:
    assert rules.cargo_limit("individual", None) == 3
    assert rules.cargo_limit("verified", None) == 10
    assert rules.cargo_limit("organization", None) is None
    assert rules.cargo_limit("partner", 42) == 42


def test_a_complete_spec_needs_an_image_by_digest() -> None:
    assert rules.validate_spec({"image": "r.example/acme/x"}, complete=False) == {}
    errors = rules.validate_spec({"image": "r.example/acme/x:latest"}, complete=True)
    assert errors == {"image_digest": ["is required: images are referenced by digest"]}
    assert rules.validate_spec({"image": f"r.example/acme/x@{DIGEST}"}, complete=True) == {}
    assert rules.image_of({"image": f"127.0.0.1:5000/acme/x:1.0@{DIGEST}"}) == (
        "127.0.0.1:5000/acme/x",
        DIGEST,
    )
    bad = rules.validate_spec(
        {"image": "x", "image_digest": "sha256:XYZ", "runtime": "java", "input_schema": {"type": 5}},
        complete=True,
    )
    assert set(bad) == {"image_digest", "runtime", "input_schema"}
    assert "wasm_hash" in rules.validate_spec(
        {"runtime": "wasm", "wasm_url": "https://x/m.wasm"}, complete=True
    )


def f(severity: str, id: str = "CVE-1", package: str = "p") -> Finding:
    return Finding(id=id, package=package, installed_version="1", severity=severity)


def test_findings_cap_the_trust_level() -> None:
    assert trust.max_trust_by_findings({"critical": 1})[0] == 0
    assert trust.max_trust_by_findings({"high": 6})[0] == 0
    assert trust.max_trust_by_findings({"high": 5})[0] == 1
    assert trust.max_trust_by_findings({"high": 0, "medium": 9})[0] == 3


def test_trust_blockers_name_every_missing_condition() -> None:
    facts = trust.TrustFacts(
        scanned=True, counts={"high": 1}, successes=100, publisher_verified=True, signed=False
    )
    assert trust.trust_blockers(1, facts) == []
    two = trust.trust_blockers(2, facts)
    assert any("high" in r for r in two) and any("cosign" in r for r in two)
    unscanned = trust.TrustFacts(scanned=False, counts={}, successes=3, publisher_verified=False, signed=True)
    assert len(trust.trust_blockers(1, unscanned)) == 3
    assert trust.trust_blockers(0, unscanned) == []


def test_merging_scanners_keeps_the_worst_severity_and_shows_disagreement() -> None:
    per = {
        "trivy": [f("high", "CVE-1"), f("low", "CVE-2")],
        "grype": [
            Finding("GHSA-x", "p", "1", "critical", aliases=("CVE-1",)),
        ],
    }
    merged = trust.merge_findings(per)
    assert [(m.identity, m.severity) for m in merged] == [
        (("CVE-1", "p"), "critical"),
        (("CVE-2", "p"), "low"),
    ]
    assert trust.disagreements(per) == [
        {"id": "CVE-2", "package": "p", "found_by": ["trivy"], "missed_by": ["grype"]}
    ]


def test_job_outcomes_map_to_reputation_events() -> None:
    assert trust.reputation_events_for_job("succeeded", None, 10, 300) == ["success", "fast"]
    assert trust.reputation_events_for_job("succeeded", None, 200, 300) == ["success"]
    assert trust.reputation_events_for_job("failed", "boom", 1, 300) == ["failure"]
    assert trust.reputation_events_for_job("failed", "dead-lettered after 3 attempts", 1, 300) == []
    assert trust.reputation_events_for_job("timeout", None, 400, 300) == ["timeout"]
    assert trust.reputation_events_for_job("cancelled", None, None, 300) == ["cancel"]
    assert trust.clamp_reputation(Decimal("5.3")) == Decimal(5)
    assert trust.clamp_reputation(Decimal("-1")) == Decimal(0)


def test_hourly_actions() -> None:
    def act(
        score: str, level: int = 1, rate: float | None = 1.0, c24: int = 0, c7: int = 0
    ) -> trust.ReputationActions:
        return trust.reputation_actions(trust.ReputationFacts(Decimal(score), level, rate, c24, c7))

    assert act("2.0") == trust.ReputationActions([], False, None, None)
    assert act("1.4").warn and act("1.4").demote_to is None
    assert act("0.9", level=2).demote_to == 1
    assert act("2.0", level=2, rate=0.7).demote_to == 0
    assert act("2.0", rate=0.85).warn == ["success rate 85% is below 90%"]
    assert act("2.0", c24=3).flag
    assert act("0.4").suspend and act("2.0", c7=10).suspend


@pytest.mark.parametrize(
    ("cls", "events", "version", "expected"),
    [
        (DebianVersion, [{"introduced": "0"}, {"fixed": "3.0.11-1"}], "3.0.2-1", True),
        (DebianVersion, [{"introduced": "0"}, {"fixed": "3.0.11-1"}], "3.0.11-1", False),
        (DebianVersion, [{"introduced": "0"}, {"fixed": "1:1.0"}], "2.0", True),  # the epoch wins
        (PypiVersion, [{"introduced": "2.0"}, {"fixed": "2.0.1"}], "2.0rc1", False),
        (PypiVersion, [{"introduced": "2.0"}, {"fixed": "2.0.1"}], "2.0", True),
        (SemverVersion, [{"introduced": "0"}, {"last_affected": "4.17.20"}], "4.17.20", True),
        (SemverVersion, [{"introduced": "0"}, {"last_affected": "4.17.20"}], "4.17.21", False),
        (
            SemverVersion,
            [{"introduced": "1.0.0"}, {"fixed": "1.2.0"}, {"introduced": "2.0.0"}, {"fixed": "2.1.0"}],
            "1.5.0",
            False,
        ),
        (
            SemverVersion,
            [{"introduced": "1.0.0"}, {"fixed": "1.2.0"}, {"introduced": "2.0.0"}, {"fixed": "2.1.0"}],
            "2.0.5",
            True,
        ),
    ],
)
def test_osv_ranges_use_each_ecosystems_ordering(
    cls: type, events: list, version: str, expected: bool
) -> None:
    assert in_range(cls(version), events, cls) is expected


def test_an_advisory_for_another_release_or_listing_versions() -> None:
    entry = {"package": {"ecosystem": "Debian:11", "name": "x"}, "versions": ["1.0-1"]}
    assert not affects(entry, Package("Debian:12", "x", "1.0-1"))
    assert affects(entry, Package("Debian:11", "x", "1.0-1"))
    assert affects(
        {"package": {"ecosystem": "Debian", "name": "x"}, "versions": ["1.0-1"]},
        Package("Debian:12", "x", "1.0-1"),
    )


def test_trivy_report_format() -> None:
    report = {
        "SchemaVersion": 2,
        "Results": [
            {
                "Target": "t",
                "Type": "debian",
                "Vulnerabilities": [
                    {
                        "VulnerabilityID": "CVE-1",
                        "PkgName": "a",
                        "InstalledVersion": "1",
                        "FixedVersion": "1.1, 2.0",
                        "Severity": "HIGH",
                    },
                    {
                        "VulnerabilityID": "CVE-2",
                        "PkgName": "b",
                        "InstalledVersion": "1",
                        "Severity": "UNKNOWN",
                    },
                ],
            },
            {"Target": "python", "Type": "python-pkg"},
        ],
    }
    findings = parse_trivy_report(report)
    assert [(x.id, x.severity, x.fixed_versions, x.ecosystem) for x in findings] == [
        ("CVE-1", "high", ("1.1", "2.0"), "debian"),
        ("CVE-2", "unknown", (), "debian"),
    ]
    with pytest.raises(ReportError):
        parse_trivy_report({"Results": [{"Vulnerabilities": [{"PkgName": "a"}]}]})
    with pytest.raises(ReportError):
        parse_trivy_report(["not", "a", "report"])


def test_grype_report_format() -> None:
    report = {
        "matches": [
            {
                "vulnerability": {
                    "id": "GHSA-x",
                    "severity": "Negligible",
                    "fix": {"versions": ["2.0"], "state": "fixed"},
                },
                "relatedVulnerabilities": [{"id": "CVE-9"}],
                "artifact": {"name": "lodash", "version": "1.0", "type": "npm"},
            }
        ],
        "source": {"type": "image"},
    }
    (finding,) = parse_grype_report(report)
    assert finding.identity == ("CVE-9", "lodash") and finding.severity == "low"
    assert finding.fixed_versions == ("2.0",)
    with pytest.raises(ReportError):
        parse_grype_report({"matches": [{"vulnerability": {}}]})
