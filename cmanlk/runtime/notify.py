"""The systemd notify protocol (sd_notify(3)) with the standard library only.

Messages are datagrams of newline-separated `KEY=VALUE` lines sent to the AF_UNIX socket named in
$NOTIFY_SOCKET (a path, or an abstract socket when it starts with '@'). cmanlkd sends READY=1
after its first ring forms, STATUS=... on each membership change, WATCHDOG=1 every half of
$WATCHDOG_USEC when the watchdog is on for this process (WATCHDOG_PID unset or ours), and
STOPPING=1 when it begins a graceful leave. Without $NOTIFY_SOCKET every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("cmanlk.notify")


class Notifier:
    """Sends sd_notify messages; a no-op when the service manager did not ask for them."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address: str | bytes | None = None
        path = env.get("NOTIFY_SOCKET", "")
        if path.startswith("@"):
            self._address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self._address = path
        self._watchdog_s = _watchdog_interval(env)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """Was a notify socket given?"""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1 (half of WATCHDOG_USEC), None when the watchdog is off."""
        return self._watchdog_s

    def notify(self, **fields: str) -> bool:
        """Send `KEY=VALUE` fields in one datagram; return whether it was sent (errors are logged)."""
        if self._address is None:
            return False
        text = "\n".join(f"{k}={v.replace(chr(10), ' ')}" for k, v in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", ",".join(fields), exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        """READY=1 with a STATUS line."""
        return self.notify(READY="1", STATUS=status, MAINPID=str(os.getpid()))

    def status(self, status: str) -> bool:
        """A STATUS line (shown by `systemctl status`)."""
        return self.notify(STATUS=status)

    def stopping(self, status: str = "leaving the cluster") -> bool:
        """STOPPING=1: a graceful shutdown has begun."""
        return self.notify(STOPPING="1", STATUS=status)

    async def watchdog_loop(self) -> None:
        """Send WATCHDOG=1 every half of WATCHDOG_USEC until cancelled; returns at once if off.

        The loop only runs while the event loop runs, so a wedged loop stops the pings and
        systemd restarts the daemon, which is what the watchdog is for.
        """
        interval = self._watchdog_s
        if interval is None or self._address is None:
            return
        while True:
            self.notify(WATCHDOG="1")
            await asyncio.sleep(interval)

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid is not None and pid != str(os.getpid())):
        return None
    return usec / 2 / 1_000_000
