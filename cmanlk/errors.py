"""The exception hierarchy of cmanlk (see STYLE.md, "Errors")."""

from __future__ import annotations


class CmanlkError(Exception):
    """Base of every error cmanlk raises on purpose."""


class ConfigError(CmanlkError):
    """One or more configuration problems; `problems` lists every one, each with file, line and key."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ConfigProblem:
    """A single configuration problem: where it is and what is wrong."""

    __slots__ = ("file", "key", "line", "message")

    def __init__(self, file: str, line: int, key: str, message: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"

    def __repr__(self) -> str:
        return f"ConfigProblem({self.file!r}, {self.line}, {self.key!r}, {self.message!r})"


class UsageError(CmanlkError):
    """A local client asked for something illegal now; `code` is the error code of the reply."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class KernelError(CmanlkError):
    """A configfs, sysfs or netlink operation failed; carries the path and errno."""

    def __init__(self, path: str, errno: int, message: str) -> None:
        self.path = path
        self.errno = errno
        super().__init__(f"{path}: {message} (errno {errno})")


class MalformedPacket(CmanlkError):
    """A packet that cannot be decoded. Raised by decoders, caught inside the cores, never escapes.

    `reason` is a short stable token (used as a drop-counter key), `detail` free text.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class InternalError(CmanlkError):
    """A bug: invariants may be void. Log everything, leave the ring, exit non-zero."""
