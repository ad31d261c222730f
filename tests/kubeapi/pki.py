"""A test PKI made with the ``openssl`` command: CA, API server certificate, client certificates.

    pki = PKI.create(tmpdir)                         # CA + server cert for 127.0.0.1, ::1, localhost
    cert, key = pki.client("system:node:n1", "system:nodes")
    pki.kubeconfig(path, server_url, cert=(cert, key))              # files
    pki.kubeconfig(path, server_url, token="t0k3n", inline=True)    # -data fields

EC P-256 keys: quick to make, and accepted by Python's ssl and by kubectl (Go).
"""

from __future__ import annotations

import atexit
import base64
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

import yaml

DAYS = "3650"


def _openssl(*args: str, cwd: str) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


@dataclass
class PKI:
    dir: str
    ca_cert: str
    ca_key: str
    server_cert: str
    server_key: str
    _clients: dict[tuple[str, str | None], tuple[str, str]] = field(default_factory=dict)
    _serial: int = 1

    @classmethod
    def create(cls, directory: str, *, server_ips: tuple[str, ...] = ()) -> PKI:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        ca_cert, ca_key = os.path.join(directory, "ca.crt"), os.path.join(directory, "ca.key")
        _openssl(
            "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", ca_key, "-out", ca_cert, "-days", DAYS, "-subj", "/CN=wgagent-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=directory,
        )  # fmt: skip
        pki = cls(directory, ca_cert, ca_key, "", "")
        sans = ["IP:127.0.0.1", "IP:::1", "DNS:localhost", "DNS:kubernetes"] + [f"IP:{ip}" for ip in server_ips]
        pki.server_cert, pki.server_key = pki._issue(
            "server", "/CN=kube-apiserver", f"subjectAltName={','.join(sans)}\nextendedKeyUsage=serverAuth\n"
        )
        return pki

    def client(self, cn: str, org: str | None = None) -> tuple[str, str]:
        """A client certificate and key for ``CN=cn`` (``O=org``); made once, then reused."""
        found = self._clients.get((cn, org))
        if found:
            return found
        name = f"client-{len(self._clients)}-" + "".join(c if c.isalnum() else "_" for c in cn)
        subject = (f"/O={org}" if org else "") + f"/CN={cn}"
        pair = self._issue(name, subject, "extendedKeyUsage=clientAuth\n")
        self._clients[(cn, org)] = pair
        return pair

    def _issue(self, name: str, subject: str, extensions: str) -> tuple[str, str]:
        d = self.dir
        key, csr, crt, ext = (os.path.join(d, name + s) for s in (".key", ".csr", ".crt", ".ext"))
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n" + extensions)
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", csr, "-subj", subject, cwd=d,
        )  # fmt: skip
        self._serial += 1
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.ca_cert, "-CAkey", self.ca_key, "-set_serial", str(self._serial),
            "-out", crt, "-days", DAYS, "-extfile", ext, cwd=d,
        )  # fmt: skip
        os.chmod(key, 0o600)
        return crt, key

    def kubeconfig(
        self,
        path: str,
        server: str,
        *,
        cert: tuple[str, str] | None = None,
        token: str | None = None,
        inline: bool = False,
        token_file: str | None = None,
    ) -> str:
        """Write a kubeconfig for ``server`` with a client certificate, a token, or a token file."""
        cluster: dict[str, object] = {"server": server}
        user: dict[str, object] = {}
        if inline:
            cluster["certificate-authority-data"] = _b64(self.ca_cert)
            if cert:
                user["client-certificate-data"] = _b64(cert[0])
                user["client-key-data"] = _b64(cert[1])
        else:
            cluster["certificate-authority"] = self.ca_cert
            if cert:
                user["client-certificate"], user["client-key"] = cert
        if token:
            user["token"] = token
        if token_file:
            user["tokenFile"] = token_file
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": cluster}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            "current-context": "test",
            "users": [{"name": "test", "user": user}],
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
        return path


def _b64(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


_shared: PKI | None = None


def shared_pki() -> PKI:
    """One PKI per test process (its directory removed at exit): making keys takes time."""
    global _shared
    if _shared is None:
        directory = tempfile.mkdtemp(prefix="kubeapi-pki-")
        atexit.register(shutil.rmtree, directory, True)
        _shared = PKI.create(directory)
    return _shared
