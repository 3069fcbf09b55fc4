"""Certificates made by the tests themselves with the `openssl` command line (OpenSSL 3.0+).

`Pki(directory)` writes PEM files there and returns their paths:
- `ca(name)`: a self-signed CA (`name.crt`, `name.key`);
- `server(name, ca)`: a server certificate for `localhost` and `127.0.0.1`, signed by `ca`;
- `client(name, ca)`: a client certificate (extendedKeyUsage clientAuth), signed by `ca`;
- `expired_client(name, ca)`: the same, valid only in January 2020 (`openssl ca` back-dates,
  `openssl x509` of OpenSSL 3.0 cannot).

Keys are EC P-256, unencrypted, the layout cert-manager writes (`tls.crt`, `tls.key`, `ca.crt`)
is up to the caller: `Pair.install(directory)` copies a pair (and its CA) under those names,
each file replaced by a rename, as a Kubernetes Secret volume update lands.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pair:
    """A certificate, its key and the CA certificate that signed it."""

    cert: Path
    key: Path
    ca: Path

    def install(self, directory: Path, *, key: bool = True, cert: bool = True) -> None:
        """Puts `tls.crt`, `tls.key` and `ca.crt` in `directory`, each by an atomic rename."""
        directory.mkdir(parents=True, exist_ok=True)
        wanted = [(self.ca, "ca.crt")]
        if cert:
            wanted.append((self.cert, "tls.crt"))
        if key:
            wanted.append((self.key, "tls.key"))
        for source, name in wanted:
            tmp = directory / f".{name}.tmp"
            shutil.copyfile(source, tmp)
            os.replace(tmp, directory / name)


class Pki:
    """Makes certificates in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def openssl(self, *args: str) -> None:
        out = subprocess.run(["openssl", *args], cwd=self.dir, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise AssertionError(f"openssl {' '.join(args)} failed ({out.returncode}): {out.stderr}")

    def ca(self, name: str) -> Path:
        self.openssl(
            "req", "-x509", *EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
            "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        return self.dir / f"{name}.crt"

    def _request(self, name: str) -> None:
        self.openssl("req", *EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")

    def _sign(self, name: str, ca: str, extensions: str) -> Pair:
        self._request(name)
        (self.dir / f"{name}.ext").write_text(extensions)
        self.openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        )  # fmt: skip
        return Pair(self.dir / f"{name}.crt", self.dir / f"{name}.key", self.dir / f"{ca}.crt")

    def server(self, name: str, ca: str) -> Pair:
        return self._sign(name, ca, "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")

    def client(self, name: str, ca: str) -> Pair:
        return self._sign(name, ca, "extendedKeyUsage=clientAuth\n")

    def expired_client(self, name: str, ca: str) -> Pair:
        self._request(name)
        (self.dir / f"{name}.cnf").write_text(
            f"[ca]\ndefault_ca = d\n[d]\ndatabase = {name}.index\nnew_certs_dir = .\nserial = {name}.serial\n"
            "default_md = sha256\npolicy = p\nx509_extensions = e\nunique_subject = no\n"
            "[p]\ncommonName = supplied\n[e]\nextendedKeyUsage = clientAuth\n"
        )
        (self.dir / f"{name}.index").write_text("")
        (self.dir / f"{name}.serial").write_text("01\n")
        self.openssl(
            "ca", "-batch", "-notext", "-config", f"{name}.cnf", "-cert", f"{ca}.crt", "-keyfile", f"{ca}.key",
            "-in", f"{name}.csr", "-out", f"{name}.crt",
            "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
        )  # fmt: skip
        return Pair(self.dir / f"{name}.crt", self.dir / f"{name}.key", self.dir / f"{ca}.crt")
