"""Fetch a Cargo image by digest from its OCI registry (distribution API v2) into an OCI image layout,
checking every digest and the size limit before a byte of a layer is downloaded."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
MANIFEST_LIMIT = 4 * 1024 * 1024
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
CHUNK = 1024 * 1024


class FetchError(Exception):
    """The image could not be fetched as submitted; `reason` is shown to the publisher."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageRef:
    registry: str  # host[:port]
    repository: str

    @classmethod
    def parse(cls, name: str) -> ImageRef:
        """`host[:port]/repo/path` (a first part without `.`, `:` or `localhost` means Docker Hub)."""
        first, _, rest = name.partition("/")
        if not rest or not ("." in first or ":" in first or first == "localhost"):
            return cls("registry-1.docker.io", name if rest else f"library/{name}")
        return cls(first, rest)


@dataclass(frozen=True)
class FetchedImage:
    """An image on disk as an OCI layout (`index.json`, `blobs/sha256/…`)."""

    ref: ImageRef
    digest: str  # the manifest digest that was asked for
    layout: Path
    manifest: dict[str, Any]
    config: Descriptor
    layers: tuple[Descriptor, ...]
    total_size: int

    def blob_path(self, digest: str) -> Path:
        return self.layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise FetchError(f"malformed manifest: {where} is not a descriptor object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise FetchError(f"malformed manifest: {where} has no sha256 digest")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise FetchError(f"malformed manifest: {where} has no size")
    annotations = value.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise FetchError(f"malformed manifest: {where} annotations are not an object")
    return Descriptor(str(media_type or ""), digest, size, {str(k): str(v) for k, v in annotations.items()})


def parse_manifest(body: bytes) -> tuple[str, dict[str, Any]]:
    """(media type, document) of a manifest or index; FetchError("malformed manifest: …") otherwise."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise FetchError("malformed manifest: not JSON") from None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise FetchError("malformed manifest: not a schemaVersion 2 manifest")
    media_type = doc.get("mediaType")
    if media_type is None:
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type in (OCI_INDEX, DOCKER_LIST):
        manifests = doc.get("manifests")
        if not isinstance(manifests, list) or not manifests:
            raise FetchError("malformed manifest: the index lists no manifests")
        for i, entry in enumerate(manifests):
            descriptor(entry, f"manifests[{i}]")
    elif media_type in (OCI_MANIFEST, DOCKER_MANIFEST):
        descriptor(doc.get("config"), "config")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise FetchError("malformed manifest: layers is not a list")
        for i, layer in enumerate(layers):
            descriptor(layer, f"layers[{i}]")
    else:
        raise FetchError(f"malformed manifest: unsupported media type {media_type!r}")
    return str(media_type), doc


def pick_platform(doc: dict[str, Any], os: str = "linux", arch: str = "amd64") -> Descriptor:
    """The index entry for the platform Islands run (linux/amd64), else the first entry."""
    for entry in doc["manifests"]:
        platform = entry.get("platform") or {}
        if platform.get("os") == os and platform.get("architecture") == arch:
            return descriptor(entry, "manifests[]")
    return descriptor(doc["manifests"][0], "manifests[0]")


class RegistryClient:
    """Anonymous (or bearer-token) reads from one OCI registry; plain HTTP for hosts named insecure."""

    def __init__(self, ref: ImageRef, *, insecure_hosts: Iterable[str] = (), timeout: float = 30.0) -> None:
        host = ref.registry.rsplit(":", 1)[0] if ref.registry.count(":") == 1 else ref.registry
        scheme = "http" if host in set(insecure_hosts) or ref.registry in set(insecure_hosts) else "https"
        self.ref = ref
        self.base = f"{scheme}://{ref.registry}/v2/{ref.repository}"
        self.http = httpx.AsyncClient(timeout=timeout, follow_redirects=True)
        self._token: str | None = None

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def _authenticate(self, challenge: str) -> bool:
        """Answer a `WWW-Authenticate: Bearer realm=…,service=…,scope=…` challenge anonymously."""
        if not challenge.lower().startswith("bearer "):
            return False
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", None)
        if not realm:
            return False
        params.setdefault("scope", f"repository:{self.ref.repository}:pull")
        response = await self.http.get(realm, params=params)
        if response.status_code != 200:
            return False
        body = response.json()
        self._token = body.get("token") or body.get("access_token")
        return bool(self._token)

    async def _get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        try:
            response = await self.http.get(self.base + path, headers=self._headers(headers))
            if response.status_code == 401 and await self._authenticate(
                response.headers.get("www-authenticate", "")
            ):
                response = await self.http.get(self.base + path, headers=self._headers(headers))
        except httpx.HTTPError as exc:
            raise FetchError(f"registry {self.ref.registry} unreachable: {exc}") from None
        return response

    async def manifest(self, reference: str) -> tuple[bytes, str]:
        """The raw manifest at a digest or tag and its media type; a digest is checked against the body."""
        response = await self._get(f"/manifests/{reference}", {"Accept": ACCEPT})
        if response.status_code == 404:
            raise FetchError(
                f"manifest {reference} does not exist in {self.ref.registry}/{self.ref.repository}"
            )
        if response.status_code != 200:
            raise FetchError(f"registry answered {response.status_code} for manifest {reference}")
        body = response.content
        if len(body) > MANIFEST_LIMIT:
            raise FetchError("malformed manifest: larger than 4 MiB")
        if reference.startswith("sha256:") and sha256_digest(body) != reference:
            raise FetchError(f"digest mismatch: the registry's manifest hashes to {sha256_digest(body)}")
        return body, response.headers.get("content-type", "").split(";")[0]

    async def blob_bytes(self, desc: Descriptor, limit: int) -> bytes:
        """A small blob (config, signature payload) in memory, digest-checked."""
        if desc.size > limit:
            raise FetchError(f"blob {desc.digest} is {desc.size} bytes, more than {limit}")
        response = await self._get(f"/blobs/{desc.digest}")
        if response.status_code != 200:
            raise FetchError(f"registry answered {response.status_code} for blob {desc.digest}")
        if sha256_digest(response.content) != desc.digest:
            raise FetchError(f"digest mismatch: blob {desc.digest} has other content")
        return response.content

    async def blob_to(self, desc: Descriptor, path: Path) -> None:
        """Stream a blob to a file, never past its declared size, and check its digest."""
        hasher, written = hashlib.sha256(), 0
        url = f"{self.base}/blobs/{desc.digest}"
        try:
            async with self.http.stream("GET", url, headers=self._headers()) as response:
                if response.status_code != 200:
                    raise FetchError(f"registry answered {response.status_code} for blob {desc.digest}")
                with path.open("wb") as out:
                    async for chunk in response.aiter_bytes(CHUNK):
                        written += len(chunk)
                        if written > desc.size:
                            raise FetchError(f"blob {desc.digest} is larger than its manifest says")
                        hasher.update(chunk)
                        out.write(chunk)
        except httpx.HTTPError as exc:
            raise FetchError(f"registry {self.ref.registry} unreachable: {exc}") from None
        if "sha256:" + hasher.hexdigest() != desc.digest:
            raise FetchError(f"digest mismatch: blob {desc.digest} has other content")


async def fetch_image(
    name: str, digest: str, dest: Path, *, max_bytes: int, insecure_hosts: Iterable[str] = ()
) -> FetchedImage:
    """Copy `name@digest` into an OCI layout at `dest`. FetchError (with the reason) when the digest
    does not exist or does not match, the manifest is malformed, or the image exceeds `max_bytes`."""
    ref = ImageRef.parse(name)
    async with RegistryClient(ref, insecure_hosts=insecure_hosts) as client:
        body, _ = await client.manifest(digest)
        media_type, doc = parse_manifest(body)
        blobs = dest / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        (blobs / digest.removeprefix("sha256:")).write_bytes(body)
        if media_type in (OCI_INDEX, DOCKER_LIST):
            chosen = pick_platform(doc)
            body, _ = await client.manifest(chosen.digest)
            media_type, doc = parse_manifest(body)
            if media_type in (OCI_INDEX, DOCKER_LIST):
                raise FetchError("malformed manifest: an index inside an index")
            (blobs / chosen.digest.removeprefix("sha256:")).write_bytes(body)
        config = descriptor(doc["config"], "config")
        layers = tuple(descriptor(layer, f"layers[{i}]") for i, layer in enumerate(doc["layers"]))
        total = config.size + sum(layer.size for layer in layers)
        if total > max_bytes:
            raise FetchError(f"image too big: {total} bytes, the limit is {max_bytes}")
        for desc in (config, *layers):
            await client.blob_to(desc, blobs / desc.digest.removeprefix("sha256:"))
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": media_type, "digest": sha256_digest(body), "size": len(body)}],
    }
    (dest / "index.json").write_text(json.dumps(index))
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return FetchedImage(ref, digest, dest, doc, config, layers, total)
