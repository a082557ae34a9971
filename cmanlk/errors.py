"""The exception hierarchy of cmanlk (see STYLE.md, "Errors") and its one vocabulary of result codes.

`ErrorCode` is every result code cmanlk answers a local client with. Each member carries two
spellings of the same decision:

- `wire`: the stable string cmanlk's own IPC frames carry (docs/ipc.md, "Error codes"). These
  strings never change; old clients keep matching them. `ClientError.code` is this string.
- `cs_error`: the number of corosync's `cs_error_t` (include/corosync/corotypes.h, corosync
  3.1.7) that a libqb client (libcpg, libvotequorum, libcfg, …) must get for the same refusal.

The first block of members is corosync's `cs_error_t` itself, one member per value, in its order
and named as there without the `CS_ERR_` prefix — except where cmanlk's wire already had a word
for that code, which the member keeps (ACCESS is `PERMISSION_DENIED`, NAME_NOT_FOUND `NOT_FOUND`,
TOO_BIG `TOO_LARGE`, VERSION `VERSION_UNSUPPORTED`). The second block is cmanlk's own codes: each
names the `cs_error_t` it stands for, so the mapping is total and read off one table:

    member                wire                  cs_error_t
    OK                    ok                    CS_OK 1 (success; never in an error frame)
    LIBRARY               library               CS_ERR_LIBRARY 2
    VERSION_UNSUPPORTED   version_unsupported   CS_ERR_VERSION 3
    INIT                  init                  CS_ERR_INIT 4
    TIMEOUT               timeout               CS_ERR_TIMEOUT 5
    TRY_AGAIN             try_again             CS_ERR_TRY_AGAIN 6
    INVALID_PARAM         invalid_param         CS_ERR_INVALID_PARAM 7
    NO_MEMORY             no_memory             CS_ERR_NO_MEMORY 8
    BAD_HANDLE            bad_handle            CS_ERR_BAD_HANDLE 9
    BUSY                  busy                  CS_ERR_BUSY 10
    PERMISSION_DENIED     permission_denied     CS_ERR_ACCESS 11
    NOT_EXIST             not_exist             CS_ERR_NOT_EXIST 12
    NAME_TOO_LONG         name_too_long         CS_ERR_NAME_TOO_LONG 13
    EXIST                 exist                 CS_ERR_EXIST 14
    NO_SPACE              no_space              CS_ERR_NO_SPACE 15
    INTERRUPT             interrupt             CS_ERR_INTERRUPT 16
    NOT_FOUND             not_found             CS_ERR_NAME_NOT_FOUND 17
    NO_RESOURCES          no_resources          CS_ERR_NO_RESOURCES 18
    NOT_SUPPORTED         not_supported         CS_ERR_NOT_SUPPORTED 19
    BAD_OPERATION         bad_operation         CS_ERR_BAD_OPERATION 20
    FAILED_OPERATION      failed_operation      CS_ERR_FAILED_OPERATION 21
    MESSAGE_ERROR         message_error         CS_ERR_MESSAGE_ERROR 22
    QUEUE_FULL            queue_full            CS_ERR_QUEUE_FULL 23
    QUEUE_NOT_AVAILABLE   queue_not_available   CS_ERR_QUEUE_NOT_AVAILABLE 24
    BAD_FLAGS             bad_flags             CS_ERR_BAD_FLAGS 25
    TOO_LARGE             too_large             CS_ERR_TOO_BIG 26
    NO_SECTIONS           no_sections           CS_ERR_NO_SECTIONS 27
    CONTEXT_NOT_FOUND     context_not_found     CS_ERR_CONTEXT_NOT_FOUND 28
    TOO_MANY_GROUPS       too_many_groups       CS_ERR_TOO_MANY_GROUPS 30
    SECURITY              security              CS_ERR_SECURITY 100
    -- cmanlk's own --
    BAD_FRAME             bad_frame             CS_ERR_MESSAGE_ERROR 22  the stream is unreadable
    BAD_REQUEST           bad_request           CS_ERR_INVALID_PARAM 7   as corosync's ipc_glue for a
                                                                         request of the wrong size
    UNKNOWN_OP            unknown_op            CS_ERR_INVALID_PARAM 7   corosync_sending_allowed: a
                                                                         message id out of range
    HELLO_REQUIRED        hello_required        CS_ERR_INIT 4            the connection is not set up
    NOT_RUNNING           not_running           CS_ERR_TRY_AGAIN 6       the node is not running yet
                                                                         or is leaving: corosync
                                                                         answers a client before it is
                                                                         ready with TRY_AGAIN, and a
                                                                         leaving daemon's clients see
                                                                         the connection close anyway
    TOO_SLOW              too_slow              CS_ERR_LIBRARY 2         the daemon dropped the client
    NO_SERVICE            no_service            CS_ERR_NOT_EXIST 12      as ipc_glue for a service
                                                                         that is not loaded
    NOT_A_MEMBER          not_found             CS_ERR_NOT_EXIST 12      cfg killnode of a node that
                                                                         is not a member (exec/cfg.c)
    CONNECTION_CLOSED     connection_closed     CS_ERR_LIBRARY 2         client library only

NOT_A_MEMBER shares its wire string with NOT_FOUND (cmanlk's IPC said `not_found` for both before
this table existed, and that string stays) but not its `cs_error_t`: corosync answers a kill of a
non-member with CS_ERR_NOT_EXIST and a vote change for an unknown node with CS_ERR_NAME_NOT_FOUND.
`ErrorCode.from_wire("not_found")` is NOT_FOUND.

Raising: `UsageError(ErrorCode.X, message)` for a local request that is illegal now, and the
typed refusals of a bounded core — `QueueFull` (try_again: a send queue or window is full; retry
after it drains) and `TooLarge` (too_large: it can never fit). No decision anywhere is taken by
matching an exception's text: callers look at `code` (or the exception's type).
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """A result code: `wire` (cmanlk IPC's stable string) and `cs_error` (corosync's cs_error_t)."""

    # corosync's cs_error_t, in its order (corotypes.h)
    OK = ("ok", 1)
    LIBRARY = ("library", 2)
    VERSION_UNSUPPORTED = ("version_unsupported", 3)
    INIT = ("init", 4)
    TIMEOUT = ("timeout", 5)
    TRY_AGAIN = ("try_again", 6)
    INVALID_PARAM = ("invalid_param", 7)
    NO_MEMORY = ("no_memory", 8)
    BAD_HANDLE = ("bad_handle", 9)
    BUSY = ("busy", 10)
    PERMISSION_DENIED = ("permission_denied", 11)
    NOT_EXIST = ("not_exist", 12)
    NAME_TOO_LONG = ("name_too_long", 13)
    EXIST = ("exist", 14)
    NO_SPACE = ("no_space", 15)
    INTERRUPT = ("interrupt", 16)
    NOT_FOUND = ("not_found", 17)
    NO_RESOURCES = ("no_resources", 18)
    NOT_SUPPORTED = ("not_supported", 19)
    BAD_OPERATION = ("bad_operation", 20)
    FAILED_OPERATION = ("failed_operation", 21)
    MESSAGE_ERROR = ("message_error", 22)
    QUEUE_FULL = ("queue_full", 23)
    QUEUE_NOT_AVAILABLE = ("queue_not_available", 24)
    BAD_FLAGS = ("bad_flags", 25)
    TOO_LARGE = ("too_large", 26)
    NO_SECTIONS = ("no_sections", 27)
    CONTEXT_NOT_FOUND = ("context_not_found", 28)
    TOO_MANY_GROUPS = ("too_many_groups", 30)
    SECURITY = ("security", 100)
    # cmanlk's own codes, each standing for one cs_error_t (the module docstring says why)
    BAD_FRAME = ("bad_frame", 22)
    BAD_REQUEST = ("bad_request", 7)
    UNKNOWN_OP = ("unknown_op", 7)
    HELLO_REQUIRED = ("hello_required", 4)
    NOT_RUNNING = ("not_running", 6)
    TOO_SLOW = ("too_slow", 2)
    NO_SERVICE = ("no_service", 12)
    NOT_A_MEMBER = ("not_found", 12)
    CONNECTION_CLOSED = ("connection_closed", 2)

    @property
    def wire(self) -> str:
        """The stable string of cmanlk's IPC frames (`code` of an error frame)."""
        wire: str = self.value[0]
        return wire

    @property
    def cs_error(self) -> int:
        """corosync's cs_error_t value a libqb client gets for this result."""
        number: int = self.value[1]
        return number

    @property
    def cs_name(self) -> str:
        """corosync's symbol for `cs_error` ("CS_OK", "CS_ERR_ACCESS", …), as its tools print it."""
        member = _BY_CS_ERROR[self.cs_error]
        return "CS_OK" if member is ErrorCode.OK else "CS_ERR_" + _CS_NAMES.get(member.name, member.name)

    @classmethod
    def from_wire(cls, text: str) -> ErrorCode | None:
        """The member an IPC error frame's `code` names (the first one for a shared string);
        None for a code this version does not know (newer daemons may add codes)."""
        return _BY_WIRE.get(text)

    @classmethod
    def from_cs_error(cls, number: int) -> ErrorCode | None:
        """The corosync member for a cs_error_t value (None for a number corosync does not define)."""
        return _BY_CS_ERROR.get(number)

    def __str__(self) -> str:
        return self.wire


_CS_NAMES = {"PERMISSION_DENIED": "ACCESS", "NOT_FOUND": "NAME_NOT_FOUND", "TOO_LARGE": "TOO_BIG",
             "VERSION_UNSUPPORTED": "VERSION"}
"""The members whose name is cmanlk's wire word rather than corosync's (the module docstring)."""
_BY_WIRE: dict[str, ErrorCode] = {}
_BY_CS_ERROR: dict[int, ErrorCode] = {}
for _member in ErrorCode:
    _BY_WIRE.setdefault(_member.wire, _member)
    _BY_CS_ERROR.setdefault(_member.cs_error, _member)  # corosync's block comes first
del _member


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
    """A local client asked for something illegal now; `code` is the result of the reply."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code = code
        super().__init__(message)


class QueueFull(UsageError):
    """A bounded queue or send window cannot take this now (try_again): nothing was queued;
    the same request succeeds once the queue drains (after the token, after deliveries)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.TRY_AGAIN, message)


class TooLarge(UsageError):
    """The request can never fit (too_large): a message above the maximum size."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.TOO_LARGE, message)


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
    """A bug: invariants may be void. Log everything, leave the ring, exit non-zero.

    Raised by the runtime when the core fails while handling an event (the core's exception is
    its `__cause__`), or when the core returns an action the runtime does not know.
    """
