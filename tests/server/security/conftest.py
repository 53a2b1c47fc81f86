"""A ``umlog serve`` with a [security] table on every door, and test certificates.

Certificates come from the ``cryptography`` package when it is installed,
else from the ``openssl`` command line tool (``require_tool``)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from helpers import require_tool, scaled, subprocess_env

PASSWORDS = {"admin": "admin-secret", "alice": "alice-secret", "bob": "bob-secret"}


def _openssl(*args: str, cwd: str) -> None:
    exe = require_tool(shutil.which("openssl"), "openssl", "apt-get install openssl")
    subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: str, serial: int = 1, server_name: str = "server") -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate
    (CN=alice) in ``d``; their paths by name."""
    os.makedirs(d, exist_ok=True)
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return _certs_openssl(d, serial, server_name)
    return _certs_cryptography(d, serial, server_name)


def _certs_openssl(d: str, serial: int, server_name: str) -> dict[str, str]:
    if not os.path.exists(os.path.join(d, "ca.pem")):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days",
                 "2", "-subj", "/CN=umlog test CA", cwd=d)
    with open(os.path.join(d, "san.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{server_name}.key", "-out", f"{server_name}.csr",
             "-subj", f"/CN=localhost/O={server_name}", cwd=d)
    _openssl("x509", "-req", "-in", f"{server_name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial",
             str(serial), "-out", f"{server_name}.pem", "-days", "2", "-extfile", "san.cnf", cwd=d)
    if not os.path.exists(os.path.join(d, "client.pem")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr", "-subj",
                 "/CN=alice", cwd=d)
        _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "1000",
                 "-out", "client.pem", "-days", "2", cwd=d)
    return {"ca": os.path.join(d, "ca.pem"), "cert": os.path.join(d, f"{server_name}.pem"),
            "key": os.path.join(d, f"{server_name}.key"), "client_cert": os.path.join(d, "client.pem"),
            "client_key": os.path.join(d, "client.key")}


def _certs_cryptography(d: str, serial: int, server_name: str) -> dict[str, str]:  # pragma: no cover - optional
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def write(name, k, cert):
        with open(os.path.join(d, name + ".key"), "wb") as f:
            f.write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption()))
        with open(os.path.join(d, name + ".pem"), "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))

    now = datetime.datetime.now(datetime.UTC)

    def build(subject, issuer, pub, signer, n, ca=False, san=False):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub).serial_number(n)
             .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_path = os.path.join(d, "ca.key")
    if os.path.exists(ca_path):
        with open(ca_path, "rb") as f:
            ca_key = serialization.load_pem_private_key(f.read(), None)
        with open(os.path.join(d, "ca.pem"), "rb") as f:
            ca_name = x509.load_pem_x509_certificate(f.read()).subject
    else:
        ca_key = key()
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "umlog test CA")])
        write("ca", ca_key, build(ca_name, ca_name, ca_key.public_key(), ca_key, 1, ca=True))
    sk = key()
    write(server_name, sk, build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                                            x509.NameAttribute(NameOID.ORGANIZATION_NAME, server_name)]),
                                 ca_name, sk.public_key(), ca_key, serial, san=True))
    if not os.path.exists(os.path.join(d, "client.pem")):
        ck = key()
        write("client", ck, build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")]), ca_name,
                                  ck.public_key(), ca_key, 1000))
    return {"ca": os.path.join(d, "ca.pem"), "cert": os.path.join(d, f"{server_name}.pem"),
            "key": os.path.join(d, f"{server_name}.key"), "client_cert": os.path.join(d, "client.pem"),
            "client_key": os.path.join(d, "client.key")}


def umlog_cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "umlog", *args], input=input, capture_output=True, text=True,
                          env=subprocess_env(), timeout=scaled(60))


class SecureServer:
    """``umlog serve --config FILE``; ``addresses``: ready-line name -> (host, port)."""

    def __init__(self, config: str, cwd: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "umlog", "-v", "serve", "--config", config],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                                     env=subprocess_env())
        self._err: list[str] = []
        self._t = threading.Thread(target=lambda: self._err.extend(self.proc.stderr), daemon=True)
        self._t.start()
        deadline = time.monotonic() + scaled(30)
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("umlog ready"):
                self.addresses = {k: (h, int(p)) for k, h, p in re.findall(r"([\w-]+)=(\S+):(\d+)", line)}
                return
        self.stop()
        raise RuntimeError(f"umlog serve did not get ready: {line!r}\n{self.stderr_text()}")

    def bootstrap(self, name: str = "kafka") -> str:
        h, p = self.addresses[name]
        return f"{h}:{p}"

    def stderr_text(self) -> str:
        return "".join(self._err)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(scaled(15))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._t.join(scaled(2))
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """One secured server for a test module: users admin (super user), alice, bob;
    Kafka on PLAINTEXT, SASL_PLAINTEXT, SASL_SSL and SSL (mTLS), MQTT on mqtt
    and mqtts, HTTP on http and https."""
    base = tmp_path_factory.mktemp("secure")
    data = str(base / "data")
    os.makedirs(os.path.join(data, "meta"))
    for user, pw in PASSWORDS.items():
        r = umlog_cli("users", "add", user, "--password-stdin", "--iterations", "4096", "--data-dir", data,
                      input=pw + "\n")
        assert r.returncode == 0, r.stderr
    certs = make_certs(str(base / "certs"))
    kafka_certs = make_certs(str(base / "certs"), server_name="kafka")
    config = base / "umlog.toml"
    config.write_text(f"""
[server]
data_dir = "{data}"

[kafka]
listen = ["PLAINTEXT://127.0.0.1:0", "SASL_PLAINTEXT://127.0.0.1:0", "SASL_SSL://127.0.0.1:0", "SSL://127.0.0.1:0"]
tls_cert = "{kafka_certs['cert']}"
tls_key = "{kafka_certs['key']}"
tls_client_ca = "{certs['ca']}"

[mqtt]
listen = ["mqtt://127.0.0.1:0", "mqtts://127.0.0.1:0"]
tls_cert = "{certs['cert']}"
tls_key = "{certs['key']}"

[http]
listen = ["http://127.0.0.1:0", "https://127.0.0.1:0"]
tls_cert = "{certs['cert']}"
tls_key = "{certs['key']}"

[security]
super_users = ["User:admin"]
""")
    server = SecureServer(str(config), str(base))
    server.data_dir = data
    server.certs = certs
    server.cert_dir = str(base / "certs")
    try:
        yield server
    finally:
        server.stop()


def sasl_conf(server, user: str, mechanism: str = "SCRAM-SHA-256", password: str | None = None,
              ssl: bool = False) -> dict:
    """confluent-kafka settings for ``user`` over SASL_PLAINTEXT (or SASL_SSL)."""
    c = {"bootstrap.servers": server.bootstrap("kafka-sasl_ssl" if ssl else "kafka-sasl_plaintext"),
         "security.protocol": "SASL_SSL" if ssl else "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
         "sasl.username": user, "sasl.password": PASSWORDS.get(user, "") if password is None else password}
    if ssl:
        c.update({"ssl.ca.location": server.certs["ca"], "ssl.certificate.location": server.certs["client_cert"],
                  "ssl.key.location": server.certs["client_key"]})
    return c
