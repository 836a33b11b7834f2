"""HTTP refusals on the enroll port (and the gateway's refused upgrades) reach a real client (curl) every time: the server closes with
a lingering close, so a client still sending the request it was refused for reads the reply
instead of a reset; and every refusal body is ``STATUS reason``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import trio

from tests.support.est import HOST, make_deployment, start
from tests.support.gateway import Gateway

RUNS = 30


async def _curl(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(args, capture_stdout=True, capture_stderr=True, check=False)


async def test_an_oversized_header_gets_431_every_time_and_a_large_body_413(tmp_path: Path) -> None:
    config = make_deployment(tmp_path / "d")
    # 100 KiB of headers in 50 lines (16 KiB is the limit): the client is still sending them
    # when the server has refused the request.
    headers = tmp_path / "headers.txt"
    headers.write_text("".join(f"X-Filler-{i}: {'a' * 2048}\r\n" for i in range(50)))
    body = tmp_path / "body.bin"
    body.write_bytes(b"b" * (1 << 20))  # 1 MiB against a 64 KiB limit
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            switch = await start(nursery, config, tmp_path / "d")
            seen: list[bytes] = []
            for _ in range(RUNS):
                done = await _curl(switch.curl("-H", f"@{headers}", "-w", "\n%{http_code}",
                                               switch.url("cacerts")))
                seen.append(done.stdout)
            assert seen == [b"431 request_header_too_large\n\n431"] * RUNS
            done = await _curl(switch.curl(
                "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{body}",
                "-w", "\n%{http_code}", switch.url("simpleenroll")))
            assert done.stdout == b"413 body_too_large\n\n413", done.stderr
            nursery.cancel_scope.cancel()


async def test_an_oversized_upgrade_request_on_the_gateway_port_gets_its_431_every_time(gw: Gateway,
        tmp_path: Path) -> None:
    headers = tmp_path / "headers.txt"
    headers.write_text("".join(f"X-Filler-{i}: {'a' * 2048}\r\n" for i in range(50)))
    with trio.fail_after(180):
        port = gw.ports["gateway"]
        args = ["curl", "-sS", "--max-time", "20", "--cacert", str(gw.ca_file),
                "--resolve", f"{HOST}:{port}:127.0.0.1",
                "--cert", str(gw.directory / "pki/demo-agent.pem"),
                "--key", str(gw.directory / "pki/demo-agent.key"),
                "-H", f"@{headers}", "-w", "\n%{http_code}", f"https://{HOST}:{port}/agent"]
        seen = [(await _curl(args)).stdout for _ in range(RUNS)]
        assert seen == [b"431 bad_request\n\n431"] * RUNS
