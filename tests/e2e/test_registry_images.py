"""Images fetched for real from an OCI registry by digest, the built-in OSV scanner over them, the
Trivy/Grype runners with binaries on PATH, and cosign signature verification."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.marketplace import oci
from coordinator.marketplace.osv import OsvScanner
from coordinator.marketplace.scanners import COMPLETED, ERROR, MISSING, GrypeScanner, TrivyScanner
from coordinator.marketplace.signing import verify_image_signature
from tests import oci_support
from tests.oci_support import (
    DEBIAN_12,
    OCI_INDEX,
    Registry,
    digest_of,
    dist_info,
    dpkg_status,
    new_key,
    osv,
    write_advisories,
)

INSECURE = ["127.0.0.1"]
oci_registry = oci_support.oci_registry


def vulnerable_files() -> dict[str, bytes]:
    return {
        "etc/os-release": DEBIAN_12,
        "var/lib/dpkg/status": dpkg_status(("openssl", "3.0.2-1"), ("zlib1g", "1:1.2.13.dfsg-1")),
        **dist_info("Jinja2", "2.11.2"),
        "app/package-lock.json": json.dumps(
            {"lockfileVersion": 3, "packages": {"": {}, "node_modules/lodash": {"version": "4.17.20"}}}
        ).encode(),
    }


@pytest.fixture
def advisories(tmp_path: Path) -> Path:
    return write_advisories(
        tmp_path / "osv",
        # 3.0.2-1 < 3.0.11-1 only in Debian ordering (a string comparison says otherwise).
        osv(
            "DSA-0001-1",
            "Debian:12",
            "openssl",
            [{"introduced": "0"}, {"fixed": "3.0.11-1"}],
            "CRITICAL",
            ["CVE-2099-0001"],
        ),
        osv("DSA-0002-1", "Debian:11", "zlib1g", [{"introduced": "0"}, {"fixed": "1:9"}], "CRITICAL"),
        osv(
            "GHSA-aaaa-bbbb-cccc",
            "PyPI",
            "jinja2",
            [{"introduced": "0"}, {"fixed": "2.11.3"}],
            "HIGH",
            ["CVE-2099-0002"],
        ),
        osv(
            "GHSA-dddd-eeee-ffff",
            "npm",
            "lodash",
            [{"introduced": "4.0.0"}, {"fixed": "4.17.21"}],
            "MODERATE",
        ),
        osv(
            "GHSA-1111-2222-3333", "npm", "lodash", [{"introduced": "0"}, {"last_affected": "3.10.1"}], "HIGH"
        ),
    )


async def fetch(
    registry: Registry, repo: str, digest: str, dest: Path, max_bytes: int = 10**8
) -> oci.FetchedImage:
    return await oci.fetch_image(
        f"{registry.host}/{repo}", digest, dest, max_bytes=max_bytes, insecure_hosts=INSECURE
    )


async def test_an_image_is_fetched_by_digest_into_an_oci_layout(
    oci_registry: Registry, tmp_path: Path
) -> None:
    digest = oci_registry.push_image("acme/fetch", {"hello.txt": b"hi"})
    image = await fetch(oci_registry, "acme/fetch", digest, tmp_path / "img")
    assert image.digest == digest and len(image.layers) == 1
    for desc in (image.config, *image.layers):
        assert digest_of(image.blob_path(desc.digest).read_bytes()) == desc.digest
    index = json.loads((tmp_path / "img" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == digest


async def test_a_digest_that_does_not_exist_is_reported(oci_registry: Registry, tmp_path: Path) -> None:
    oci_registry.push_image("acme/missing", {"a": b"a"})
    with pytest.raises(oci.FetchError) as failure:
        await fetch(oci_registry, "acme/missing", "sha256:" + "0" * 64, tmp_path / "img")
    assert "does not exist" in failure.value.reason


async def test_an_image_over_the_size_limit_is_refused_before_its_layers_download(
    oci_registry: Registry, tmp_path: Path
) -> None:
    digest = oci_registry.push_image("acme/big", {"blob.bin": os.urandom(64 * 1024)})
    with pytest.raises(oci.FetchError) as failure:
        await fetch(oci_registry, "acme/big", digest, tmp_path / "img", max_bytes=16 * 1024)
    assert "image too big" in failure.value.reason and "16384" in failure.value.reason
    assert not list((tmp_path / "img" / "blobs" / "sha256").iterdir())[1:]  # only the manifest was stored


async def test_a_malformed_manifest_is_reported(oci_registry: Registry, tmp_path: Path) -> None:
    # The registry stores this index (it checks no fields of an index), but it names no image.
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "note": "no manifests"}).encode()
    digest = oci_registry.push_manifest("acme/malformed", "v1", body, OCI_INDEX)
    with pytest.raises(oci.FetchError) as failure:
        await fetch(oci_registry, "acme/malformed", digest, tmp_path / "img")
    assert failure.value.reason == "malformed manifest: the index lists no manifests"


def test_manifest_parsing_names_what_is_wrong() -> None:
    cases = {
        b"{not json": "not JSON",
        b'{"schemaVersion": 1}': "not a schemaVersion 2 manifest",
        json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": {"digest": "x"}}).encode(): (
            "config has no sha256 digest"
        ),
        json.dumps({"schemaVersion": 2, "mediaType": "text/plain"}).encode(): "unsupported media type",
    }
    for body, expected in cases.items():
        with pytest.raises(oci.FetchError) as failure:
            oci.parse_manifest(body)
        assert expected in failure.value.reason


async def test_the_builtin_scanner_finds_the_planted_packages_with_ecosystem_ordering(
    oci_registry: Registry, tmp_path: Path, advisories: Path
) -> None:
    digest = oci_registry.push_image("acme/vulnerable", vulnerable_files())
    image = await fetch(oci_registry, "acme/vulnerable", digest, tmp_path / "img")
    outcome = await OsvScanner(advisories).scan(image, 30)
    assert outcome.status == COMPLETED, outcome.reason
    found = {(f.id, f.package, f.severity, f.fixed_versions) for f in outcome.findings}
    assert found == {
        ("DSA-0001-1", "openssl", "critical", ("3.0.11-1",)),
        ("GHSA-aaaa-bbbb-cccc", "Jinja2", "high", ("2.11.3",)),
        ("GHSA-dddd-eeee-ffff", "lodash", "medium", ("4.17.21",)),
    }  # zlib1g's advisory is for Debian 11; lodash 4.17.20 is past last_affected 3.10.1
    assert outcome.details["packages"] == {"Debian:12": 2, "PyPI": 1, "npm": 1}


async def test_the_builtin_scanner_without_advisory_data_is_an_error_never_a_pass(
    oci_registry: Registry, tmp_path: Path
) -> None:
    digest = oci_registry.push_image("acme/nodata", vulnerable_files())
    image = await fetch(oci_registry, "acme/nodata", digest, tmp_path / "img")
    outcome = await OsvScanner(None).scan(image, 30)
    assert outcome.status == ERROR and "advisory" in (outcome.reason or "")


@pytest.fixture
def fake_path(tmp_path: Path) -> Iterator[Path]:
    """A PATH holding only the scanner stand-ins each test writes (and the shell they need)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    try:
        yield bin_dir
    finally:
        os.environ["PATH"] = old


def tool(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


async def test_trivy_and_grype_run_from_path_over_the_fetched_layout(
    oci_registry: Registry, tmp_path: Path, fake_path: Path
) -> None:
    digest = oci_registry.push_image("acme/tools", {"a": b"a"})
    image = await fetch(oci_registry, "acme/tools", digest, tmp_path / "img")
    trivy_report = {
        "SchemaVersion": 2,
        "ArtifactName": str(image.layout),
        "Results": [
            {
                "Target": "acme (debian 12)",
                "Class": "os-pkgs",
                "Type": "debian",
                "Vulnerabilities": [
                    {
                        "VulnerabilityID": "CVE-2099-0001",
                        "PkgName": "openssl",
                        "InstalledVersion": "3.0.2-1",
                        "FixedVersion": "3.0.11-1",
                        "Severity": "CRITICAL",
                    }
                ],
            }
        ],
    }
    (tmp_path / "trivy.json").write_text(json.dumps(trivy_report))
    # The stand-in checks it was given the layout the way Trivy takes one, then prints its report.
    tool(
        fake_path,
        "trivy",
        f'[ "$1 $2 $3" = "image --input {image.layout}" ] || exit 3\ncat {tmp_path}/trivy.json\n',
    )
    tool(fake_path, "grype", f'[ "$1" = "oci-dir:{image.layout}" ] || exit 3\necho \'{{"matches": []}}\'\n')
    trivy = await TrivyScanner("trivy").scan(image, 10)
    grype = await GrypeScanner("grype").scan(image, 10)
    assert trivy.status == COMPLETED and [f.id for f in trivy.findings] == ["CVE-2099-0001"]
    assert grype.status == COMPLETED and grype.findings == []


async def test_a_missing_binary_is_reported_missing_and_a_hanging_one_is_killed(
    oci_registry: Registry, tmp_path: Path, fake_path: Path
) -> None:
    digest = oci_registry.push_image("acme/hang", {"a": b"a"})
    image = await fetch(oci_registry, "acme/hang", digest, tmp_path / "img")
    missing = await GrypeScanner("grype").scan(image, 10)
    assert missing.status == MISSING and "not installed" in (missing.reason or "")
    tool(fake_path, "trivy", f"echo $$ > {tmp_path}/pid\nexec sleep 600\n")
    hung = await TrivyScanner("trivy").scan(image, 0.5)
    assert hung.status == ERROR and hung.reason == "trivy did not finish within 0.5 s"
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the process group was killed, nothing left behind
    tool(fake_path, "grype", "echo 'not json'\n")
    broken = await GrypeScanner("grype").scan(image, 10)
    assert broken.status == ERROR and "report unreadable" in (broken.reason or "")


async def test_a_cosign_signature_by_the_publisher_key_verifies(oci_registry: Registry) -> None:
    key, pem = new_key()
    other, other_pem = new_key()
    digest = oci_registry.push_image("acme/signed", {"a": b"signed"})
    unsigned = oci_registry.push_image("acme/signed", {"a": b"unsigned"}, tag="unsigned")
    oci_registry.sign("acme/signed", digest, key)
    name = f"{oci_registry.host}/acme/signed"
    good = await verify_image_signature(name, digest, pem, insecure_hosts=INSECURE)
    assert good.verified, good.reason
    wrong_key = await verify_image_signature(name, digest, other_pem, insecure_hosts=INSECURE)
    assert not wrong_key.verified and "does not verify" in wrong_key.reason
    none = await verify_image_signature(name, unsigned, pem, insecure_hosts=INSECURE)
    assert not none.verified and "no cosign signature" in none.reason
    # A signature for another digest, copied under this digest's tag, does not count.
    oci_registry.sign("acme/signed", unsigned, other)
    moved = await verify_image_signature(name, unsigned, pem, insecure_hosts=INSECURE)
    assert not moved.verified
    assert other is not key
