"""A cfg shutdown tracker as pacemakerd is one, through Debian's libcfg (ctypes), for the tests.

    python -m tests.system.cfg_tracker [--ignore-term] [--timeout S]

corosync_cfg_initialize with a shutdown callback, corosync_cfg_trackstart, then dispatch. Prints
(flushed, one line each): "tracking <pid>" once tracking; "shutdown <flags>" for every
TESTSHUTDOWN callback, which it answers NO with corosync_cfg_replyto_shutdown (what pacemakerd
does: "never allow corosync to shut down while we're running"), then "reply <cs_error>";
"sigterm" on SIGTERM, after which it finalizes and exits 0 (unless --ignore-term); "lost <cs_error>"
when dispatch fails (the daemon went away), then exits 1.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import signal
import sys
import time

CS_OK = 1
CS_DISPATCH_ALL = 2
SHUTDOWN_REPLY_NO = 0

ShutdownCallback = ctypes.CFUNCTYPE(None, ctypes.c_uint64, ctypes.c_int)


class Callbacks(ctypes.Structure):
    _fields_ = [("shutdown", ShutdownCallback)]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ignore-term", action="store_true")
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args()
    lib = ctypes.CDLL("libcfg.so.7")
    handle = ctypes.c_uint64()
    termed: list[bool] = []

    def say(text: str) -> None:
        print(text, flush=True)

    @ShutdownCallback
    def on_shutdown(h: int, flags: int) -> None:
        say(f"shutdown {flags}")
        say(f"reply {lib.corosync_cfg_replyto_shutdown(ctypes.c_uint64(h), SHUTDOWN_REPLY_NO)}")

    def on_term(signum: int, frame: object) -> None:
        say("sigterm")
        termed.append(True)

    signal.signal(signal.SIGTERM, on_term)
    callbacks = Callbacks(on_shutdown)
    rc = lib.corosync_cfg_initialize(ctypes.byref(handle), ctypes.byref(callbacks))
    if rc != CS_OK:
        say(f"initialize {rc}")
        return 1
    rc = lib.corosync_cfg_trackstart(handle, ctypes.c_uint8(0))
    if rc != CS_OK:
        say(f"trackstart {rc}")
        return 1
    fd = ctypes.c_int()
    lib.corosync_cfg_fd_get(handle, ctypes.byref(fd))
    say(f"tracking {os.getpid()}")
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline:
            if termed and not args.ignore_term:
                time.sleep(0.3)  # pacemakerd takes a while to stop its children
                lib.corosync_cfg_finalize(handle)
                return 0
            try:
                ready, _, _ = select.select([fd.value], [], [], 0.2)
            except InterruptedError:
                continue
            if ready:
                rc = lib.corosync_cfg_dispatch(handle, CS_DISPATCH_ALL)
                if rc != CS_OK:
                    say(f"lost {rc}")
                    return 1
        say("timeout")
        return 1
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
