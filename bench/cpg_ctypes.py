"""Debian's libcpg (corosync 3) through ctypes: just what the benchmark driver needs.

Declarations follow corosync's public header `corosync/cpg.h` (3.1.x): handles are u64, a
`cpg_name` is a u32 length and 128 bytes, `cpg_address` is three u32 (nodeid, pid, reason), the
totem ring id is {u32 nodeid, u64 seq} passed *by value* to the totem-confchg callback. We use
`cpg_model_initialize(CPG_MODEL_V1)` so we also get totem configuration changes (the ring as CPG
clients see it, after sync) and ask for the initial one.

No compiler and no -dev package is needed: only libcpg.so.4 (package libcpg4).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable

LIBCPG = "libcpg.so.4"

CS_OK = 1
CS_ERR_TRY_AGAIN = 6
CS_DISPATCH_ONE_NONBLOCKING = 3
CS_DISPATCH_ALL = 2
CPG_TYPE_AGREED = 2
CPG_MODEL_V1 = 1
CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF = 1
CPG_MAX_NAME_LENGTH = 128


class CpgName(ctypes.Structure):
    _fields_ = [("length", ctypes.c_uint32), ("value", ctypes.c_char * CPG_MAX_NAME_LENGTH)]


class CpgAddress(ctypes.Structure):
    _fields_ = [("nodeid", ctypes.c_uint32), ("pid", ctypes.c_uint32), ("reason", ctypes.c_uint32)]


class CpgRingId(ctypes.Structure):
    _fields_ = [("nodeid", ctypes.c_uint32), ("seq", ctypes.c_uint64)]


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


DELIVER_FN = ctypes.CFUNCTYPE(
    None,
    ctypes.c_uint64,
    ctypes.POINTER(CpgName),
    ctypes.c_uint32,
    ctypes.c_uint32,
    ctypes.c_void_p,
    ctypes.c_size_t,
)
CONFCHG_FN = ctypes.CFUNCTYPE(
    None,
    ctypes.c_uint64,
    ctypes.POINTER(CpgName),
    ctypes.POINTER(CpgAddress),
    ctypes.c_size_t,
    ctypes.POINTER(CpgAddress),
    ctypes.c_size_t,
    ctypes.POINTER(CpgAddress),
    ctypes.c_size_t,
)
TOTEM_CONFCHG_FN = ctypes.CFUNCTYPE(
    None,
    ctypes.c_uint64,
    CpgRingId,
    ctypes.c_uint32,
    ctypes.POINTER(ctypes.c_uint32),
)


class CpgModelV1(ctypes.Structure):
    _fields_ = [
        ("model", ctypes.c_int),
        ("cpg_deliver_fn", DELIVER_FN),
        ("cpg_confchg_fn", CONFCHG_FN),
        ("cpg_totem_confchg_fn", TOTEM_CONFCHG_FN),
        ("flags", ctypes.c_uint),
    ]


class CpgError(Exception):
    """A libcpg call failed; `code` is corosync's cs_error_t."""

    def __init__(self, call: str, code: int) -> None:
        super().__init__(f"{call} failed: cs_error {code}")
        self.code = code


Deliver = Callable[[int, int, bytes], None]  # nodeid, pid, message
Confchg = Callable[[list[tuple[int, int]], list[tuple[int, int, int]], list[tuple[int, int, int]]], None]
TotemConfchg = Callable[[tuple[int, int], list[int]], None]  # (rep, seq), members


class Cpg:
    """One libcpg connection joined to one group. Not thread-safe; dispatch from one thread."""

    def __init__(self, on_deliver: Deliver, on_confchg: Confchg, on_totem: TotemConfchg) -> None:
        path = ctypes.util.find_library("cpg") or LIBCPG
        self._lib = ctypes.CDLL(path)
        self._lib.cpg_mcast_joined.argtypes = [
            ctypes.c_uint64,
            ctypes.c_int,
            ctypes.POINTER(IoVec),
            ctypes.c_uint,
        ]
        self._lib.cpg_dispatch.argtypes = [ctypes.c_uint64, ctypes.c_int]
        self._lib.cpg_join.argtypes = [ctypes.c_uint64, ctypes.POINTER(CpgName)]
        self._lib.cpg_leave.argtypes = [ctypes.c_uint64, ctypes.POINTER(CpgName)]
        self._lib.cpg_fd_get.argtypes = [ctypes.c_uint64, ctypes.POINTER(ctypes.c_int)]
        self._lib.cpg_finalize.argtypes = [ctypes.c_uint64]
        self._lib.cpg_local_get.argtypes = [ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint)]
        self._on_deliver = on_deliver
        self._on_confchg = on_confchg
        self._on_totem = on_totem
        # The callback objects must outlive the handle: keep them on self.
        self._cb_deliver = DELIVER_FN(self._deliver)
        self._cb_confchg = CONFCHG_FN(self._confchg)
        self._cb_totem = TOTEM_CONFCHG_FN(self._totem)
        self._model = CpgModelV1(
            CPG_MODEL_V1,
            self._cb_deliver,
            self._cb_confchg,
            self._cb_totem,
            CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF,
        )
        self.handle = ctypes.c_uint64(0)
        self._iov = IoVec()
        self._buf: ctypes.Array[ctypes.c_char] | None = None
        self.fd = -1
        self.nodeid = 0
        self.last_call_ns = 0

    def connect(self, group: str) -> None:
        """Initialise, join `group`, fetch the fd and local node id. Raises CpgError."""
        rc = self._lib.cpg_model_initialize(
            ctypes.byref(self.handle), CPG_MODEL_V1, ctypes.byref(self._model), None
        )
        if rc != CS_OK:
            raise CpgError("cpg_model_initialize", rc)
        name = group.encode()
        self._name = CpgName(len(name), name)
        rc = self._lib.cpg_join(self.handle, ctypes.byref(self._name))
        if rc != CS_OK:
            self.close()
            raise CpgError("cpg_join", rc)
        fd = ctypes.c_int(-1)
        rc = self._lib.cpg_fd_get(self.handle, ctypes.byref(fd))
        if rc != CS_OK:
            self.close()
            raise CpgError("cpg_fd_get", rc)
        self.fd = fd.value
        local = ctypes.c_uint(0)
        if self._lib.cpg_local_get(self.handle, ctypes.byref(local)) == CS_OK:
            self.nodeid = local.value

    def mcast(self, data: bytes) -> bool:
        """Multicast `data` in agreed order; False when flow control says try again. Raises CpgError."""
        if self._buf is None or len(self._buf) < len(data):
            self._buf = ctypes.create_string_buffer(max(len(data), 65536))
        ctypes.memmove(self._buf, data, len(data))
        self._iov.iov_base = ctypes.cast(self._buf, ctypes.c_void_p)
        self._iov.iov_len = len(data)
        t0 = time.monotonic_ns()
        rc = self._lib.cpg_mcast_joined(self.handle, CPG_TYPE_AGREED, ctypes.byref(self._iov), 1)
        self.last_call_ns = time.monotonic_ns() - t0
        if rc == CS_OK:
            return True
        if rc == CS_ERR_TRY_AGAIN:
            return False
        raise CpgError("cpg_mcast_joined", rc)

    def dispatch(self) -> None:
        """Run every pending callback. Raises CpgError (e.g. the daemon died)."""
        rc = self._lib.cpg_dispatch(self.handle, CS_DISPATCH_ALL)
        if rc not in (CS_OK, CS_ERR_TRY_AGAIN):
            raise CpgError("cpg_dispatch", rc)

    def close(self) -> None:
        """Finalize the handle (ignores errors: the daemon may be gone)."""
        if self.handle.value:
            self._lib.cpg_finalize(self.handle)
            self.handle = ctypes.c_uint64(0)
        self.fd = -1

    # -- callbacks (called from inside cpg_dispatch) -------------------------------------------
    def _deliver(self, handle: int, group: object, nodeid: int, pid: int, msg: int, msg_len: int) -> None:
        self._on_deliver(nodeid, pid, ctypes.string_at(msg, msg_len))

    def _confchg(
        self,
        handle: int,
        group: object,
        members: object,
        n_members: int,
        left: object,
        n_left: int,
        joined: object,
        n_joined: int,
    ) -> None:
        m = [(members[i].nodeid, members[i].pid) for i in range(n_members)]  # type: ignore[index]
        lf = [(left[i].nodeid, left[i].pid, left[i].reason) for i in range(n_left)]  # type: ignore[index]
        jn = [(joined[i].nodeid, joined[i].pid, joined[i].reason) for i in range(n_joined)]  # type: ignore[index]
        self._on_confchg(m, lf, jn)

    def _totem(self, handle: int, ring: CpgRingId, n: int, members: object) -> None:
        self._on_totem((ring.nodeid, ring.seq), [members[i] for i in range(n)])  # type: ignore[index]
