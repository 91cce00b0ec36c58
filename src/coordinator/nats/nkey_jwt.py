"""NATS JWTs (nats-io/jwt v2 claim format) signed with ed25519 nkeys: what the auth callout reads and writes.

A JWT is `base64url(header).base64url(claims).base64url(ed25519 signature)`; the claims carry `iss` (the
signer's public nkey), `sub`, `aud`, `iat`, `exp`, `jti` (a hash of the claims) and the NATS-specific part
under `nats`. Only the `nkeys` library does cryptography here."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from typing import Any

import nkeys

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


class JwtError(ValueError):
    """A token that is not a well-formed, correctly signed NATS JWT."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_account_seed() -> str:
    """A fresh account nkey seed (`SA…`): the auth callout's issuer."""
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT).decode()


def public_key(seed: str) -> str:
    return str(nkeys.from_seed(seed.encode()).public_key.decode())


def _verify_key(public: str) -> Any:
    import nacl.signing

    raw = base64.b32decode(public + "=" * (-len(public) % 8))
    return nacl.signing.VerifyKey(bytes(raw[1:-2]))


def encode(seed: str, claims: dict[str, Any]) -> str:
    """Sign `claims` (with `sub`, optional `aud`, `exp`, `name`, `nats`) as the key of `seed`."""
    keys = nkeys.from_seed(seed.encode())
    body = {key: value for key, value in claims.items() if key != "nats"}
    body["iss"] = keys.public_key.decode()
    body["iat"] = int(time.time())
    digest = hashlib.new("sha512_256", json.dumps(body, separators=(",", ":")).encode()).digest()
    body["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    if "nats" in claims:
        body["nats"] = claims["nats"]
    signing_input = f"{_b64(json.dumps(HEADER).encode())}.{_b64(json.dumps(body).encode())}"
    return f"{signing_input}.{_b64(keys.sign(signing_input.encode()))}"


def decode(token: str, *, issuer: str | None = None) -> dict[str, Any]:
    """The claims of `token` after checking its signature against its `iss` (and, if given, that `iss`
    is `issuer`) and its expiry."""
    try:
        header_b64, claims_b64, sig_b64 = token.strip().split(".")
        header = json.loads(_unb64(header_b64))
        claims = json.loads(_unb64(claims_b64))
        signature = _unb64(sig_b64)
    except (ValueError, TypeError) as exc:
        raise JwtError(f"malformed JWT: {exc}") from exc
    if not isinstance(claims, dict) or not isinstance(header, dict):
        raise JwtError("malformed JWT")
    if header.get("alg") != HEADER["alg"]:
        raise JwtError(f"unsupported JWT algorithm {header.get('alg')!r}")
    signer = claims.get("iss")
    if not isinstance(signer, str) or (issuer is not None and signer != issuer):
        raise JwtError("JWT from an unexpected issuer")
    try:
        _verify_key(signer).verify(f"{header_b64}.{claims_b64}".encode(), signature)
    except Exception as exc:
        raise JwtError("bad JWT signature") from exc
    expires = claims.get("exp")
    if isinstance(expires, int) and expires and expires < time.time():
        raise JwtError("expired JWT")
    return claims
