"""Client-side tools: the reference agent, the EST client, the load generator and its report, the
echo upstream. They speak to Switch over the network only and import no server module (checked by
import-linter, see ``pyproject.toml``).

The reference agent (``switch agent``): ``agent`` (its life: connect, hold, renew during a
session, reconnect), ``agent_settings`` (settings and errors), ``credentials`` (its files on
disk), ``enrollment`` (enroll, renew, the renew-before window), ``session`` (one WebSocket session
over mTLS, shared with the load test), ``backoff`` (full-jitter reconnect waits, shared too),
``est_client`` (EST over h11) and ``pki`` (keys, PEM, private files, validity).
The load generator (``switch loadtest``): ``loadtest`` (the parent and its figures),
``loadtest_settings``, ``loadtest_worker`` (one worker process), ``loadtest_report`` and
``procstat`` (process-tree and machine CPU and memory, with psutil). ``echo``: the echo upstream.
"""
