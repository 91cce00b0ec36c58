"""The scanner interface and its Trivy and Grype implementations (their binaries, when on PATH, over the
fetched OCI layout; their JSON reports parsed into findings). The built-in one is in `osv.py`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from dataclasses import dataclass, field
from typing import Any, Protocol

from coordinator.marketplace.oci import FetchedImage
from coordinator.marketplace.trust import Finding, normalize_severity

COMPLETED, ERROR, MISSING = "completed", "error", "scanner_missing"
REPORT_LIMIT = 64 * 1024 * 1024


@dataclass
class ScanOutcome:
    """What one scanner said about one image. Only `completed` counts as a scan; the others carry why."""

    scanner: str
    status: str  # completed, error, scanner_missing
    findings: list[Finding] = field(default_factory=list)
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Scanner(Protocol):
    name: str

    async def scan(self, image: FetchedImage, time_limit: float) -> ScanOutcome: ...


class ReportError(ValueError):
    """A report that is not in the tool's documented format."""


def parse_trivy_report(report: Any) -> list[Finding]:
    """Trivy `--format json` (SchemaVersion 2): Results[].Vulnerabilities[] with VulnerabilityID,
    PkgName, InstalledVersion, FixedVersion (comma-separated) and Severity."""
    if not isinstance(report, dict) or not isinstance(report.get("Results", []), list):
        raise ReportError("not a Trivy JSON report (no Results list)")
    findings = []
    for result in report.get("Results") or []:
        ecosystem = result.get("Type") if isinstance(result, dict) else None
        for vuln in (result or {}).get("Vulnerabilities") or []:
            try:
                fixed = str(vuln.get("FixedVersion") or "")
                findings.append(
                    Finding(
                        id=str(vuln["VulnerabilityID"]),
                        package=str(vuln["PkgName"]),
                        installed_version=str(vuln.get("InstalledVersion", "")),
                        severity=normalize_severity(vuln.get("Severity")),
                        fixed_versions=tuple(v.strip() for v in fixed.split(",") if v.strip()),
                        ecosystem=ecosystem,
                    )
                )
            except (KeyError, TypeError, AttributeError) as exc:
                raise ReportError(f"Trivy vulnerability without {exc}") from None
    return findings


def parse_grype_report(report: Any) -> list[Finding]:
    """Grype `-o json`: matches[] with vulnerability {id, severity, fix.versions} and artifact
    {name, version, type}; relatedVulnerabilities give the CVE of a GHSA."""
    if not isinstance(report, dict) or not isinstance(report.get("matches"), list):
        raise ReportError("not a Grype JSON report (no matches list)")
    findings = []
    for match in report["matches"]:
        try:
            vuln, artifact = match["vulnerability"], match["artifact"]
            related = tuple(str(r["id"]) for r in match.get("relatedVulnerabilities") or [] if "id" in r)
            findings.append(
                Finding(
                    id=str(vuln["id"]),
                    package=str(artifact["name"]),
                    installed_version=str(artifact.get("version", "")),
                    severity=normalize_severity(vuln.get("severity")),
                    fixed_versions=tuple(str(v) for v in (vuln.get("fix") or {}).get("versions") or []),
                    ecosystem=artifact.get("type"),
                    aliases=related,
                )
            )
        except (KeyError, TypeError) as exc:
            raise ReportError(f"Grype match without {exc}") from None
    return findings


async def run_report_command(argv: list[str], time_limit: float) -> tuple[int, bytes, bytes]:
    """Run a scanner binary in its own process group; on timeout the whole group is killed."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), time_limit)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await process.wait()
        raise
    return process.returncode or 0, stdout, stderr


class BinaryScanner:
    """A scanner tool run as a subprocess that prints a JSON report on stdout."""

    name = "binary"

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def argv(self, path: str, image: FetchedImage) -> list[str]:
        raise NotImplementedError

    def parse(self, report: Any) -> list[Finding]:
        raise NotImplementedError

    async def scan(self, image: FetchedImage, time_limit: float) -> ScanOutcome:
        path = shutil.which(self.binary)
        if path is None:
            return ScanOutcome(self.name, MISSING, reason=f"{self.binary} is not installed (not on PATH)")
        try:
            code, stdout, stderr = await run_report_command(self.argv(path, image), time_limit)
        except TimeoutError:
            reason = f"{self.name} did not finish within {time_limit:.3g} s"
            return ScanOutcome(self.name, ERROR, reason=reason)
        except OSError as exc:
            return ScanOutcome(self.name, ERROR, reason=f"{self.name} could not run: {exc}")
        if code != 0:
            tail = stderr.decode(errors="replace").strip()[-500:]
            return ScanOutcome(self.name, ERROR, reason=f"{self.name} exited with {code}: {tail}")
        if len(stdout) > REPORT_LIMIT:
            return ScanOutcome(self.name, ERROR, reason=f"{self.name} report larger than 64 MiB")
        try:
            findings = self.parse(json.loads(stdout))
        except (ValueError, ReportError) as exc:
            return ScanOutcome(self.name, ERROR, reason=f"{self.name} report unreadable: {exc}")
        return ScanOutcome(self.name, COMPLETED, findings)


class TrivyScanner(BinaryScanner):
    name = "trivy"

    def argv(self, path: str, image: FetchedImage) -> list[str]:
        return [path, "image", "--input", str(image.layout), "--format", "json", "--quiet"]

    def parse(self, report: Any) -> list[Finding]:
        return parse_trivy_report(report)


class GrypeScanner(BinaryScanner):
    name = "grype"

    def argv(self, path: str, image: FetchedImage) -> list[str]:
        return [path, f"oci-dir:{image.layout}", "-o", "json", "-q"]

    def parse(self, report: Any) -> list[Finding]:
        return parse_grype_report(report)
