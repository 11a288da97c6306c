"""``--tls-cert/--tls-key``: the server speaks HTTPS with a certificate made here (self-signed, for
127.0.0.1 and localhost), the command line's own probes trust that certificate, and clients that
verify it (httpx, the openai package) work while plain HTTP and unverified clients do not."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import GREEDY, SMOLLM, free_port, home_with_models


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "studiolo test")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def studiolo(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIOLO_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "studiolo", *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, default_models):
    home = home_with_models(tmp_path_factory.mktemp("tls-home"), {SMOLLM: default_models[SMOLLM]})
    cert, key = self_signed(home)
    port = free_port()
    started = studiolo(home, "server", "start", "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key))
    # start returns once its probe, over HTTPS trusting the certificate, found its own server
    assert started.returncode == 0 and f"running on port {port}" in started.stdout, started.stderr
    yield home, port, ssl.create_default_context(cafile=str(cert))
    studiolo(home, "server", "stop")


def test_a_verifying_client_reaches_the_server_over_https(tls_server):
    home, port, trust = tls_server
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trust) as http:
        health = http.get("/health").json()
    assert health["instance"] == json.loads((home / "server.json").read_text())["instance"]
    with httpx.Client(base_url=f"https://localhost:{port}", verify=trust) as http:
        assert http.get("/health").status_code == 200
    # closed when done: an idle TLS connection left open held the server's stop for its 5 s grace period
    with openai.OpenAI(base_url=f"https://127.0.0.1:{port}/v1", api_key="x", max_retries=0,
                       http_client=httpx.Client(verify=trust)) as client:
        answer = client.chat.completions.create(model=SMOLLM, messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=3, extra_body=GREEDY)
    assert answer.usage.completion_tokens == 3


def test_plain_http_and_unverified_clients_fail(tls_server):
    _, port, _ = tls_server
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://127.0.0.1:{port}/health", timeout=5)  # the system's CAs do not know it


def test_the_command_line_finds_its_https_server(tls_server):
    home, port, _ = tls_server
    assert json.loads(studiolo(home, "server", "status", "--json").stdout) == {"running": True, "port": port}
    listed = studiolo(home, "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert SMOLLM in listed.stdout


def test_a_cert_without_its_key_is_refused(tmp_path):
    cert, _ = self_signed(tmp_path)
    started = studiolo(tmp_path, "server", "start", "--foreground", "--tls-cert", str(cert))
    assert started.returncode == 2 and "give both or neither" in started.stderr


def test_a_server_the_command_line_starts_takes_tls_from_the_settings_file(tmp_path, default_models):
    home = home_with_models(tmp_path / "home", {SMOLLM: default_models[SMOLLM]})
    cert, key = self_signed(home)
    (home / "settings.json").write_text(json.dumps({"server": {"tls_cert": str(cert), "tls_key": str(key)}}))
    port = free_port()
    try:
        listed = studiolo(home, "ls", "--json", "--port", str(port))  # none answers: ls starts one
        assert listed.returncode == 0, listed.stderr
        assert SMOLLM in listed.stdout
        trust = ssl.create_default_context(cafile=str(cert))
        assert httpx.get(f"https://127.0.0.1:{port}/health", verify=trust).status_code == 200
    finally:
        studiolo(home, "server", "stop")
