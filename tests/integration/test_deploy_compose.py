"""deploy/compose.yaml has the production shape (coordinator replicas, worker, PostgreSQL, a three-node
NATS cluster with TLS and the auth callout, streams with three copies), every file it mounts exists, and
the NATS config it mounts passes `nats-server -t` (with the node's environment and real certificates)."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coordinator.devstack import nats_server_binary
from coordinator.nats.nkey_jwt import new_account_seed, public_key

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NODES = ("nats-1", "nats-2", "nats-3")


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return document


def test_the_compose_file_has_replicas_a_worker_postgres_and_a_three_node_nats_cluster() -> None:
    services = compose()["services"]
    assert {"postgres", "migrate", "coordinator", "worker", *NODES} <= set(services)
    coordinator = services["coordinator"]
    assert coordinator["command"] == ["coordinator", "serve"]
    assert coordinator["deploy"]["replicas"] >= 2
    assert services["worker"]["command"] == ["coordinator", "worker"]
    assert services["migrate"]["command"] == ["coordinator", "migrate"]
    env = coordinator["environment"]
    assert env["NATS_URL"].startswith("tls://coordinator:")  # TLS, the coordinator's own credential
    assert env["COORDINATOR_NATS_STREAM_REPLICAS"] == "3"
    assert "COORDINATOR_NATS_AUTH_ISSUER_SEED" in env  # the replicas answer the auth callout
    assert env["COORDINATOR_ENV"] == "production"
    assert "COORDINATOR_NATS_SHARED_ISLAND_PASSWORD" not in env  # the compatibility mode stays off
    for name in ("coordinator", "worker", "migrate"):
        assert services[name]["environment"] == env
    for node in NODES:
        service = services[node]
        assert service["environment"]["NATS_SERVER_NAME"] == node
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}
        assert mounts["/etc/nats/nats.conf"] == "./nats/nats.conf"
        assert mounts["/etc/nats/tls"] == "./tls"
        assert "/data" in mounts
        assert service["command"] == ["-c", "/etc/nats/nats.conf"]
    for service in services.values():  # every file mounted from the repository exists
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and not source.startswith("./tls"):
                assert (DEPLOY / source).exists(), source
    assert (DEPLOY / "Dockerfile").exists()


def _certificates(directory: Path) -> None:
    """A CA and a server certificate for nats-1..3, as an operator would provide in deploy/tls/."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "archipelag test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(node) for node in NODES]
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nats")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(server.public_bytes(pem))
    (directory / "server-key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def test_the_mounted_nats_config_passes_nats_server_t_on_every_node(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    _certificates(tls)
    # The container paths the compose file mounts, mapped to this machine.
    conf = (DEPLOY / "nats" / "nats.conf").read_text()
    conf = conf.replace("/etc/nats/tls", str(tls)).replace('"/data/', f'"{tmp_path}/data/')
    (tmp_path / "nats.conf").write_text(conf)
    services = compose()["services"]
    for node in NODES:
        env = {
            **services[node]["environment"],
            "COORDINATOR_NATS_PASSWORD": "a-long-random-password",
            "NATS_AUTH_ISSUER_PUBLIC_KEY": public_key(new_account_seed()),
        }
        result = subprocess.run(
            [nats_server_binary(), "-t", "-c", str(tmp_path / "nats.conf")],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "configuration file" in (result.stdout + result.stderr).lower()
    # ... and a broken config is refused (the check is real).
    (tmp_path / "broken.conf").write_text(conf.replace("jetstream {", "jetstream {{"))
    broken = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(tmp_path / "broken.conf")],
        env={"NATS_SERVER_NAME": "nats-1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert broken.returncode != 0
