"""A running Switch on loopback for integration tests: a deployment from ``switch init`` with
every listener on port 0, the provisioning service on for tenant ``demo`` and one key."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from pathlib import Path

import attrs
import trio

from config.load import load_config
from config.model import SwitchConfig
from enroll.authority import Authority
from enroll.bootstrap import init_deployment
from gateway import serve

HOST = "demo.switch.test"


def make_deployment(directory: Path, *, profile_extra: str = "") -> SwitchConfig:
    path = init_deployment(directory, now=dt.datetime.now(dt.UTC))
    text = path.read_text()
    text = re.sub(r'listen = "[^"]+"', 'listen = "127.0.0.1:0"', text)
    text = text.replace('approval = "auto"', 'approval = "auto"' + profile_extra)
    text += '\n[profiles.manual]\napproval = "manual"\nkey_types = ["ec-p256"]\n'
    path.write_text(text)
    return load_config(path)


@attrs.define
class RunningSwitch:
    config: SwitchConfig
    enroll_port: int
    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "pki" / "dev-root-ca.pem"

    def url(self, op: str, label: str | None = None) -> str:
        middle = f"{label}/" if label else ""
        return f"https://{HOST}:{self.enroll_port}/.well-known/est/{middle}{op}"

    def curl(self, *args: str) -> list[str]:
        return ["curl", "-sS", "--max-time", "20", "--cacert", str(self.ca_file),
                "--resolve", f"{HOST}:{self.enroll_port}:127.0.0.1", *args]


async def start(nursery: trio.Nursery, config: SwitchConfig, directory: Path) -> RunningSwitch:
    listeners = await nursery.start(serve.run, config)
    port = listeners["enroll"][0].socket.getsockname()[1]
    return RunningSwitch(config, port, directory)


def enable_with_key(config: SwitchConfig, name: str = "Fleet", profile: str | None = None) -> str:
    authority = Authority.open(config)
    try:
        authority.enable_service("demo", actor="test")
        _, secret = authority.generate_key("demo", name, actor="test", profile=profile)
        return secret
    finally:
        authority.close()


def openssl_csr(directory: Path, cn: str, *, key_args: tuple[str, ...] = (
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"), extra: tuple[str, ...] = (),
                stem: str | None = None) -> tuple[Path, Path]:
    """``openssl req`` -> DER -> ``base64`` (coreutils) file, the RFC 7030 way and the way
    docs/enrollment.md does it. Returns (key, base64 CSR)."""
    stem = stem or cn
    key = directory / f"{stem}.key"
    der = directory / f"{stem}.csr.der"
    subprocess.run(["openssl", "req", "-new", *key_args, "-nodes", "-keyout", str(key),
                    "-subj", f"/CN={cn}", "-outform", "DER", "-out", str(der), *extra],
                   check=True, capture_output=True)
    b64 = directory / f"{stem}.csr.b64"
    with b64.open("wb") as out:
        subprocess.run(["base64", str(der)], stdout=out, check=True)
    return key, b64


def pkcs7_to_pem(b64_body: bytes, directory: Path, name: str) -> Path:
    """A certs-only PKCS#7 reply body -> PEM with ``base64 -d`` (coreutils, which refuses a CR)
    and ``openssl pkcs7``, as docs/enrollment.md does."""
    der = directory / f"{name}.p7.der"
    decoded = subprocess.run(["base64", "-d"], input=b64_body, capture_output=True)
    assert decoded.returncode == 0, f"base64 -d refused the body: {decoded.stderr!r}"
    der.write_bytes(decoded.stdout)
    pem = directory / f"{name}.pem"
    subprocess.run(["openssl", "pkcs7", "-inform", "DER", "-in", str(der), "-print_certs",
                    "-out", str(pem)], check=True, capture_output=True)
    return pem


#: The guide an agent author follows; its ``sh`` blocks are run as they are by the tests.
ENROLLMENT_GUIDE = Path(__file__).resolve().parents[2] / "docs" / "enrollment.md"


def documented_script(port: int, secret: str, guide: Path = ENROLLMENT_GUIDE) -> str:
    """Every ``sh`` block of the enrollment guide, in order, as one script: verbatim but for the
    port (the test server's, for 9443) and the provisioning key (for ``SECRET=swk_...``)."""
    blocks = re.findall(r"^```sh\n(.*?)^```", guide.read_text(), re.DOTALL | re.MULTILINE)
    assert blocks, f"no sh blocks in {guide}"
    script = "\n".join(blocks)
    assert script.count("SECRET=swk_...") == 1 and ":9443" in script
    script = script.replace("SECRET=swk_...", f"SECRET={secret}").replace(":9443", f":{port}")
    return "set -euo pipefail\n" + script
