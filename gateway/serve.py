"""``switch serve``: build the services from config and run the listeners until a signal.

SIGTERM and SIGINT stop accepting and end the process with exit 0. The store, the issuance
records and the EST service are built once; the server's TLS context is built from the configured
certificate or keystore.
"""

from __future__ import annotations

import signal

import structlog
import trio

from config.model import SwitchConfig
from config.tls_material import load_server_credentials
from enroll.authority import Authority
from enroll.est_service import EstService
from enroll.issuance import Issuance
from gateway.enroll_listener import EnrollListener
from gateway.tls import server_context

log = structlog.get_logger("switch")


async def run(config: SwitchConfig, *,
              task_status: trio.TaskStatus[dict[str, list[trio.SocketListener]]] = trio.TASK_STATUS_IGNORED,
              ) -> None:
    """Run every enabled listener; reports {listener name: sockets} once all are listening."""
    chain, key = load_server_credentials(config.tls)
    enroll_context = server_context(chain, key, client_auth="any")
    authority = Authority.open(config)
    try:
        service = EstService(config, Issuance(authority))
        listeners: dict[str, list[trio.SocketListener]] = {}
        async with trio.open_nursery() as nursery:
            if config.enroll.listen.enabled:
                enroll = EnrollListener(
                    service, lambda: enroll_context,
                    request_timeout_s=config.enroll.request_timeout_s,
                    max_body_bytes=config.enroll.max_body_bytes,
                    max_connections=config.enroll.max_connections,
                )
                listeners["enroll"] = await nursery.start(
                    enroll.serve, config.enroll.listen.host, config.enroll.listen.port)
            task_status.started(listeners)
    finally:
        authority.close()


async def main(config: SwitchConfig) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(run, config)

            async def wait_for_signal() -> None:
                async for signum in signals:
                    log.info("stopping", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(wait_for_signal)
