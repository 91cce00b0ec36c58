"""The built-in scanner: inventory an image's packages (dpkg status, apk database, Python dist-info,
npm lockfiles) from its layers, and match them against a directory of OSV advisories with each
ecosystem's own version ordering (univers)."""

from __future__ import annotations

import asyncio
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath
from typing import Any

from univers.versions import AlpineLinuxVersion, DebianVersion, PypiVersion, SemverVersion, Version

from coordinator.marketplace.oci import FetchedImage
from coordinator.marketplace.scanners import COMPLETED, ERROR, ScanOutcome
from coordinator.marketplace.trust import Finding, normalize_severity

FILE_LIMIT = 32 * 1024 * 1024
VERSION_CLASSES: dict[str, type[Version]] = {
    "Debian": DebianVersion,
    "Ubuntu": DebianVersion,
    "Alpine": AlpineLinuxVersion,
    "PyPI": PypiVersion,
    "npm": SemverVersion,
}
DPKG_STATUS = "var/lib/dpkg/status"
APK_INSTALLED = "lib/apk/db/installed"
OS_RELEASE = ("etc/os-release", "usr/lib/os-release")


@dataclass(frozen=True)
class Package:
    ecosystem: str  # OSV ecosystem, with the release when known: "Debian:12", "Alpine:v3.19", "PyPI", "npm"
    name: str
    version: str

    @property
    def base(self) -> str:
        return self.ecosystem.split(":", 1)[0]


def _wanted(path: str) -> bool:
    return (
        path in (DPKG_STATUS, APK_INSTALLED, *OS_RELEASE)
        or path.startswith("var/lib/dpkg/status.d/")
        or (path.endswith("/METADATA") and ".dist-info/" in path)
        or path.endswith("package-lock.json")
    )


def read_layers(image: FetchedImage) -> dict[str, bytes]:
    """The inventory files of the image's final filesystem (layers applied in order, whiteouts honoured)."""
    files: dict[str, bytes] = {}
    for layer in image.layers:
        try:
            with tarfile.open(image.blob_path(layer.digest), mode="r:*") as tar:
                for member in tar:
                    path = str(PurePosixPath("/", member.name))[1:]
                    parent, _, leaf = path.rpartition("/")
                    if leaf == ".wh..wh..opq":
                        prefix = parent + "/"
                        for known in [p for p in files if p.startswith(prefix)]:
                            del files[known]
                    elif leaf.startswith(".wh."):
                        gone = f"{parent}/{leaf[4:]}" if parent else leaf[4:]
                        for known in [p for p in files if p == gone or p.startswith(gone + "/")]:
                            del files[known]
                    elif member.isfile() and _wanted(path) and member.size <= FILE_LIMIT:
                        handle = tar.extractfile(member)
                        if handle is not None:
                            files[path] = handle.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ValueError(f"layer {layer.digest} is not a readable tar archive: {exc}") from None
    return files


def _os_release(files: dict[str, bytes]) -> dict[str, str]:
    for path in OS_RELEASE:
        if path in files:
            pairs = re.findall(r'^([A-Z_]+)="?([^"\n]*)"?$', files[path].decode(errors="replace"), re.M)
            return dict(pairs)
    return {}


def _paragraphs(text: str) -> Iterator[dict[str, str]]:
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if ":" in line and not line.startswith((" ", "\t")):
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
        if fields:
            yield fields


def _dpkg(text: str, ecosystem: str) -> Iterator[Package]:
    for fields in _paragraphs(text):
        name, version = fields.get("Package"), fields.get("Version")
        if not name or not version or "installed" not in fields.get("Status", "install ok installed"):
            continue
        yield Package(ecosystem, name, version)
        source = fields.get("Source", "").split(" ")[0]
        if source and source != name:  # Debian advisories name source packages
            yield Package(ecosystem, source, version)


def _apk(text: str, ecosystem: str) -> Iterator[Package]:
    name = version = None
    for line in [*text.splitlines(), ""]:
        if line.startswith("P:"):
            name = line[2:]
        elif line.startswith("V:"):
            version = line[2:]
        elif not line.strip():
            if name and version:
                yield Package(ecosystem, name, version)
            name = version = None


def _npm(text: str) -> Iterator[Package]:
    try:
        lock = json.loads(text)
    except ValueError:
        return
    if not isinstance(lock, dict):
        return
    packages = lock.get("packages")
    if isinstance(packages, dict):  # lockfileVersion 2 and 3
        for path, info in packages.items():
            if "node_modules/" in path and isinstance(info, dict) and isinstance(info.get("version"), str):
                yield Package("npm", path.rsplit("node_modules/", 1)[1], info["version"])
        return

    def walk(deps: Any) -> Iterator[Package]:  # lockfileVersion 1
        if isinstance(deps, dict):
            for name, info in deps.items():
                if isinstance(info, dict) and isinstance(info.get("version"), str):
                    yield Package("npm", name, info["version"])
                    yield from walk(info.get("dependencies"))

    yield from walk(lock.get("dependencies"))


def inventory(files: dict[str, bytes]) -> list[Package]:
    """Every package the image's package databases name."""
    release = _os_release(files)
    distro, version_id = release.get("ID", "debian"), release.get("VERSION_ID", "")
    packages: list[Package] = []
    dpkg_files = [p for p in files if p == DPKG_STATUS or p.startswith("var/lib/dpkg/status.d/")]
    if dpkg_files:
        name = "Ubuntu" if distro == "ubuntu" else "Debian"
        ecosystem = f"{name}:{version_id.split('.')[0] if name == 'Debian' else version_id}"
        for path in dpkg_files:
            packages.extend(_dpkg(files[path].decode(errors="replace"), ecosystem.rstrip(":")))
    if APK_INSTALLED in files:
        minor = ".".join(version_id.split(".")[:2])
        ecosystem = f"Alpine:v{minor}" if minor else "Alpine"
        packages.extend(_apk(files[APK_INSTALLED].decode(errors="replace"), ecosystem))
    for path, data in files.items():
        if path.endswith("/METADATA") and ".dist-info/" in path:
            headers = HeaderParser().parsestr(data.decode(errors="replace"))
            if headers.get("Name") and headers.get("Version"):
                packages.append(Package("PyPI", str(headers["Name"]), str(headers["Version"])))
        elif path.endswith("package-lock.json"):
            packages.extend(_npm(data.decode(errors="replace")))
    return sorted(set(packages), key=lambda p: (p.ecosystem, p.name, p.version))


def normalize_name(ecosystem: str, name: str) -> str:
    if ecosystem == "PyPI":
        return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503
    return name


@dataclass(frozen=True)
class Advisory:
    id: str
    aliases: tuple[str, ...]
    severity: str
    affected: tuple[dict[str, Any], ...]


def load_advisories(directory: Path) -> dict[tuple[str, str], list[tuple[Advisory, dict[str, Any]]]]:
    """OSV JSON files under `directory`, indexed by (ecosystem base, normalised package name)."""
    index: dict[tuple[str, str], list[tuple[Advisory, dict[str, Any]]]] = {}
    for path in sorted(directory.rglob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (ValueError, OSError):
            continue
        if not isinstance(doc, dict) or "id" not in doc:
            continue
        affected = tuple(a for a in doc.get("affected") or [] if isinstance(a, dict))
        advisory = Advisory(
            id=str(doc["id"]),
            aliases=tuple(str(a) for a in doc.get("aliases") or []),
            severity=advisory_severity(doc),
            affected=affected,
        )
        for entry in affected:
            package = entry.get("package") or {}
            base = str(package.get("ecosystem", "")).split(":", 1)[0]
            key = (base, normalize_name(base, str(package.get("name", ""))))
            index.setdefault(key, []).append((advisory, entry))
    return index


def advisory_severity(doc: dict[str, Any]) -> str:
    """GHSA-style `database_specific.severity`, else an `ecosystem_specific.severity` of any entry."""
    specific = doc.get("database_specific") or {}
    if isinstance(specific, dict) and specific.get("severity"):
        return normalize_severity(specific["severity"])
    for entry in doc.get("affected") or []:
        eco = (entry or {}).get("ecosystem_specific") or {}
        if isinstance(eco, dict) and eco.get("severity"):
            return normalize_severity(eco["severity"])
    return "unknown"


def _parse(cls: type[Version], text: str) -> Version | None:
    try:
        return cls(text)
    except ValueError:
        return None


def in_range(version: Version, events: Iterable[dict[str, Any]], cls: type[Version]) -> bool:
    """OSV's evaluation of one ECOSYSTEM/SEMVER range: events in version order, introduced opens,
    fixed (at or after) and last_affected (after) close."""
    parsed: list[tuple[Version | None, str]] = []
    for event in events:
        for kind in ("introduced", "fixed", "last_affected", "limit"):
            if kind in event:
                value = str(event[kind])
                if kind == "introduced" and value == "0":
                    parsed.append((None, kind))  # "0": before every version
                elif (point := _parse(cls, value)) is not None:
                    parsed.append((point, kind))

    def order(item: tuple[Version | None, str]) -> tuple[Any, ...]:
        return (0,) if item[0] is None else (1, item[0])

    parsed.sort(key=order)
    affected = False
    for point, kind in parsed:
        if kind == "introduced" and (point is None or version >= point):
            affected = True
        elif kind == "fixed" and point is not None and version >= point:
            affected = False
        elif kind == "last_affected" and point is not None and version > point:
            affected = False
        elif kind == "limit" and point is not None and version >= point:
            affected = False
    return affected


def affects(entry: dict[str, Any], package: Package) -> bool:
    """Whether one `affected[]` entry of an advisory covers this installed package."""
    wanted = str((entry.get("package") or {}).get("ecosystem", ""))
    if ":" in wanted and ":" in package.ecosystem and wanted != package.ecosystem:
        return False  # another release of the distribution
    if package.version in [str(v) for v in entry.get("versions") or []]:
        return True
    cls = VERSION_CLASSES.get(package.base)
    version = _parse(cls, package.version) if cls else None
    if cls is None or version is None:
        return False
    for rng in entry.get("ranges") or []:
        if isinstance(rng, dict) and rng.get("type") in ("ECOSYSTEM", "SEMVER"):
            if in_range(version, rng.get("events") or [], cls):
                return True
    return False


def fixed_versions(entry: dict[str, Any]) -> tuple[str, ...]:
    return tuple(
        str(event["fixed"])
        for rng in entry.get("ranges") or []
        for event in (rng or {}).get("events") or []
        if isinstance(event, dict) and "fixed" in event
    )


def match(
    packages: Iterable[Package], index: dict[tuple[str, str], list[tuple[Advisory, dict[str, Any]]]]
) -> list[Finding]:
    findings = []
    for package in packages:
        for advisory, entry in index.get((package.base, normalize_name(package.base, package.name)), []):
            if affects(entry, package):
                findings.append(
                    Finding(
                        id=advisory.id,
                        package=package.name,
                        installed_version=package.version,
                        severity=advisory.severity,
                        fixed_versions=fixed_versions(entry),
                        ecosystem=package.ecosystem,
                        aliases=advisory.aliases,
                    )
                )
    return sorted(set(findings), key=lambda f: (f.id, f.package))


class OsvScanner:
    """The built-in scanner: never needs a binary, only the advisory directory."""

    name = "builtin"

    def __init__(self, advisory_dir: Path | None) -> None:
        self.advisory_dir = advisory_dir

    def _scan(self, image: FetchedImage) -> ScanOutcome:
        if self.advisory_dir is None or not self.advisory_dir.is_dir():
            return ScanOutcome(
                self.name, ERROR, reason="no OSV advisory data (set COORDINATOR_REGISTRY_ADVISORY_DIR)"
            )
        try:
            packages = inventory(read_layers(image))
        except ValueError as exc:
            return ScanOutcome(self.name, ERROR, reason=str(exc))
        findings = match(packages, load_advisories(self.advisory_dir))
        ecosystems: dict[str, int] = {}
        for package in packages:
            ecosystems[package.ecosystem] = ecosystems.get(package.ecosystem, 0) + 1
        return ScanOutcome(self.name, COMPLETED, findings, details={"packages": ecosystems})

    async def scan(self, image: FetchedImage, time_limit: float) -> ScanOutcome:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._scan, image), time_limit)
        except TimeoutError:
            return ScanOutcome(self.name, ERROR, reason=f"builtin did not finish within {time_limit:.3g} s")
