"""cosign signature verification: the signature object cosign stores next to an image (tag
`sha256-<hex>.sig`, one simple-signing payload layer per signature) checked against a publisher's key."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.marketplace.oci import FetchError, ImageRef, RegistryClient, descriptor, parse_manifest

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
PAYLOAD_TYPE = "cosign container image signature"
PAYLOAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class SignatureVerdict:
    verified: bool
    reason: str


def signature_tag(digest: str) -> str:
    """Where cosign stores the signatures of `digest` in the image's repository."""
    algorithm, _, hex_digest = digest.partition(":")
    return f"{algorithm}-{hex_digest}.sig"


def load_public_key(pem: str) -> ec.EllipticCurvePublicKey:
    """A publisher's cosign key: PEM, ECDSA on P-256 (cosign's default). ValueError otherwise."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("must be an ECDSA P-256 public key (cosign generate-key-pair)")
    return key


def check_payload(
    payload: bytes, signature_b64: str, key: ec.EllipticCurvePublicKey, digest: str
) -> str | None:
    """None when `payload` is a simple-signing claim for `digest` signed by `key`; else the reason."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return "the signature annotation is not base64"
    try:
        key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "the signature does not verify with the publisher's key"
    try:
        claim = json.loads(payload)
        critical = claim["critical"]
        signed_digest = critical["image"]["docker-manifest-digest"]
        claim_type = critical["type"]
    except (ValueError, KeyError, TypeError):
        return "the signed payload is not a simple-signing claim"
    if claim_type != PAYLOAD_TYPE:
        return f"the signed payload has type {claim_type!r}"
    if signed_digest != digest:
        return f"the signature is for {signed_digest}, not {digest}"
    return None


async def verify_image_signature(
    name: str, digest: str, public_key_pem: str, *, insecure_hosts: Iterable[str] = ()
) -> SignatureVerdict:
    """Fetch the cosign signature object of `name@digest` and verify it with the publisher's key."""
    try:
        key = load_public_key(public_key_pem)
    except ValueError as exc:
        return SignatureVerdict(False, f"publisher key unusable: {exc}")
    ref = ImageRef.parse(name)
    reasons: list[str] = []
    try:
        async with RegistryClient(ref, insecure_hosts=insecure_hosts) as client:
            try:
                body, _ = await client.manifest(signature_tag(digest))
            except FetchError as exc:
                return SignatureVerdict(False, f"no cosign signature found ({exc.reason})")
            _, doc = parse_manifest(body)
            for layer in doc.get("layers") or []:
                annotations = layer.get("annotations") or {}
                signature = annotations.get(SIGNATURE_ANNOTATION)
                if not signature:
                    continue
                payload = await client.blob_bytes(descriptor(layer, "signature layer"), PAYLOAD_LIMIT)
                problem = check_payload(payload, signature, key, digest)
                if problem is None:
                    return SignatureVerdict(True, "cosign signature verified with the publisher's key")
                reasons.append(problem)
    except FetchError as exc:
        return SignatureVerdict(False, f"signature object unreadable: {exc.reason}")
    return SignatureVerdict(False, "; ".join(reasons) or "the signature object holds no signatures")
