"""A real OCI registry for tests (Debian's `docker-registry` on a free port), tiny images built here and
pushed over the distribution API, cosign-style signatures, and OSV advisories for the built-in scanner."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.devstack import free_port

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Registry:
    host: str  # 127.0.0.1:<port>

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = digest_of(data)
        with httpx.Client() as client:
            started = client.post(self.url(f"/v2/{repo}/blobs/uploads/"))
            assert started.status_code == 202, started.text
            location = started.headers["location"]
            if location.startswith("/"):
                location = self.url(location)
            sep = "&" if "?" in location else "?"
            done = client.put(
                f"{location}{sep}digest={digest}",
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            assert done.status_code == 201, done.text
        return digest

    def push_manifest(self, repo: str, reference: str, body: bytes, media_type: str = OCI_MANIFEST) -> str:
        with httpx.Client() as client:
            response = client.put(
                self.url(f"/v2/{repo}/manifests/{reference}"),
                content=body,
                headers={"Content-Type": media_type},
            )
        assert response.status_code == 201, response.text
        return digest_of(body)

    def push_image(self, repo: str, files: dict[str, bytes], tag: str = "latest") -> str:
        """Push a one-layer image holding `files`; returns its manifest digest."""
        layer = tar_layer(files)
        layer_digest = self.push_blob(repo, layer)
        config = json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}
        ).encode()
        config_digest = self.push_blob(repo, config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest,
                        "size": len(layer),
                    }
                ],
            }
        ).encode()
        return self.push_manifest(repo, tag, manifest)

    def sign(self, repo: str, digest: str, key: ec.EllipticCurvePrivateKey) -> None:
        """Store a cosign signature of `repo@digest` the way cosign does (tag sha256-<hex>.sig)."""
        payload = json.dumps(
            {
                "critical": {
                    "identity": {"docker-reference": f"{self.host}/{repo}"},
                    "image": {"docker-manifest-digest": digest},
                    "type": "cosign container image signature",
                },
                "optional": None,
            }
        ).encode()
        signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
        payload_digest = self.push_blob(repo, payload)
        config = b"{}"
        config_digest = self.push_blob(repo, config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                        "digest": payload_digest,
                        "size": len(payload),
                        "annotations": {"dev.cosignproject.cosign/signature": signature},
                    }
                ],
            }
        ).encode()
        self.push_manifest(repo, "sha256-" + digest.removeprefix("sha256:") + ".sig", manifest)


def tar_layer(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def new_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A cosign-style key pair (ECDSA P-256) and its public key as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, pem.decode()


def dpkg_status(*packages: tuple[str, str]) -> bytes:
    return "".join(
        f"Package: {name}\nStatus: install ok installed\nVersion: {version}\nArchitecture: amd64\n\n"
        for name, version in packages
    ).encode()


DEBIAN_12 = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'


def dist_info(name: str, version: str) -> dict[str, bytes]:
    path = f"usr/lib/python3/site-packages/{name}-{version}.dist-info/METADATA"
    return {path: f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()}


def osv(
    advisory_id: str,
    ecosystem: str,
    package: str,
    events: list[dict[str, str]],
    severity: str = "CRITICAL",
    aliases: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "schema_version": "1.6.0",
        "id": advisory_id,
        "aliases": aliases or [],
        "summary": f"test advisory for {package}",
        "affected": [
            {
                "package": {"ecosystem": ecosystem, "name": package},
                "ranges": [{"type": "ECOSYSTEM", "events": events}],
            }
        ],
        "database_specific": {"severity": severity},
    }


def write_advisories(directory: Path, *advisories: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for advisory in advisories:
        (directory / f"{advisory['id']}.json").write_text(json.dumps(advisory))
    return directory


def _start_registry(root: Path) -> Iterator[Registry]:
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail(
            "docker-registry is not installed: run `make system-deps` (Debian package docker-registry)"
        )
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = root / "registry.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    process = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    registry = Registry(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(registry.url("/v2/"), timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("docker-registry did not start")
        time.sleep(0.05)
    try:
        yield registry
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def oci_registry(tmp_root: Path) -> Iterator[Registry]:
    yield from _start_registry(tmp_root / "oci-registry")
