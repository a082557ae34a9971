"""Logging of cmanlkd: stderr (journald-aware), syslog and a log file, from `logging {}`.

Under systemd, stderr is connected to the journal ($JOURNAL_STREAM names its device:inode):
then lines carry no timestamp (the journal adds its own) and start with the sd-daemon priority
prefix `<N>`, so `journalctl -p warning` works. Otherwise lines carry a timestamp
(`timestamp: hires` adds milliseconds; under a terminal a timestamp is always shown).
Every line names its subsystem: `cmanlk.totem`, `cmanlk.udpu`, `cmanlk.node`, ...
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from cmanlk.config import LoggingConfig
from cmanlk.runtime.statedir import creation_problem

_SYSLOG_PRIO = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warning": logging.WARNING,
    "err": logging.ERROR,
    "crit": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "emerg": logging.CRITICAL,
}


class JournalFormatter(logging.Formatter):
    """`<prio>subsystem: message` for stderr connected to journald."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG_PRIO.get(record.levelno, 6)
        return f"<{prio}>{record.name}: {super().format(record)}"


def under_journal() -> bool:
    """Is stderr the journal (JOURNAL_STREAM matches stderr's device and inode)?"""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def logfile_problem(config: LoggingConfig) -> str | None:
    """Why the log file `config` asks for cannot be opened (the words setup_logging prints), or
    None; creates nothing (the start check, cmanlk.runtime.preflight)."""
    if not (config.to_logfile and config.logfile):
        return None
    why = creation_problem(config.logfile)
    return None if why is None else f"cannot open log file {config.logfile}: {why}"


def setup_logging(config: LoggingConfig | None, *, debug: bool = False, foreground: bool = True) -> None:
    """Install the handlers `config` asks for on the `cmanlk` logger tree (and the root logger).

    `debug` (the --debug flag) forces debug level. Errors opening the log file or syslog are
    reported on stderr, never raised: logging must not stop the daemon from starting.
    """
    cfg = config or LoggingConfig()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    level = logging.DEBUG if debug or cfg.is_debug else logging.INFO
    root.setLevel(level)
    if cfg.to_stderr or foreground:
        handler = logging.StreamHandler(sys.stderr)
        if under_journal():
            handler.setFormatter(JournalFormatter("%(message)s"))
        else:
            datefmt = "%Y-%m-%d %H:%M:%S"
            fmt = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"
            if cfg.timestamp == "off" and not sys.stderr.isatty():
                fmt = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
            handler.setFormatter(logging.Formatter(fmt, datefmt))
        root.addHandler(handler)
    if cfg.to_syslog and os.path.exists("/dev/log"):
        try:
            syslog = logging.handlers.SysLogHandler(
                "/dev/log", facility=logging.handlers.SysLogHandler.facility_names[cfg.syslog_facility]
            )
        except OSError as exc:
            print(f"cmanlkd: cannot open syslog: {exc}", file=sys.stderr)
        else:
            syslog.setLevel(_LEVELS.get(cfg.syslog_priority, logging.INFO) if not debug else logging.DEBUG)
            syslog.setFormatter(logging.Formatter("cmanlkd[%(process)d]: %(name)s: %(message)s"))
            root.addHandler(syslog)
    if cfg.to_logfile and cfg.logfile:
        try:
            os.makedirs(os.path.dirname(cfg.logfile), exist_ok=True)
            logfile = logging.handlers.WatchedFileHandler(cfg.logfile)  # survives logrotate
        except OSError as exc:
            print(f"cmanlkd: cannot open log file {cfg.logfile}: {exc.strerror or exc}", file=sys.stderr)
        else:
            logfile.setLevel(_LEVELS.get(cfg.logfile_priority, logging.INFO) if not debug else logging.DEBUG)
            logfile.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
            )
            root.addHandler(logfile)
    for subsys, value in cfg.subsys_debug:
        logging.getLogger(f"cmanlk.{subsys.lower()}").setLevel(logging.DEBUG if value != "off" else level)
