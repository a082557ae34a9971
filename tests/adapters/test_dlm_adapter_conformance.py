"""DLM adapter conformance: configfs, sysfs and uevents behave alike on the real kernel and the fake.

The "real" variant runs only where the kernel has the DLM (/sys/kernel/config/dlm, root,
libdlm3): inside the VM lab (tests/vm, scripts/vm-tests.sh). Every expectation here was first
observed on Debian's 6.1 kernel; the fake is held to it.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cmanlk.errors import KernelError
from kernel_glue.configfs import clear_stale, parse_sockaddr_storage, sockaddr_storage
from kernel_glue.dlm_protocol import DlmUevent, Gfs2Uevent, LockspaceUevent
from kernel_glue.kmod import ensure_dlm_kernel, ensure_module, is_module_loaded, is_mounted
from kernel_glue.uevents import parse_dlm_uevent
from tests.adapters.dlm_env import FakeDlmEnv, Pending, RealDlmEnv, real_kernel_available

EVENT_WAIT_S = 10.0
"""TCG-emulated guests are slow; a uevent normally arrives within milliseconds."""
JOIN_WAIT_S = 20.0
C = "cluster"

DlmEnv = FakeDlmEnv | RealDlmEnv


@pytest.fixture(params=["fake", "real"])
def env(request: pytest.FixtureRequest) -> Iterator[DlmEnv]:
    if request.param == "real" and not real_kernel_available():
        if os.environ.get("CMANLK_REQUIRE_REAL_DLM") == "1":
            pytest.fail("CMANLK_REQUIRE_REAL_DLM=1 but there is no kernel DLM/libdlm here")
        pytest.skip("no kernel DLM here (runs in the VM lab: scripts/vm-tests.sh)")
    e: DlmEnv = FakeDlmEnv() if request.param == "fake" else RealDlmEnv()
    try:
        yield e
    finally:
        e.cleanup()


def v4(a: str) -> bytes:
    return sockaddr_storage(ipaddress.IPv4Address(a))


def v6(a: str) -> bytes:
    return sockaddr_storage(ipaddress.IPv6Address(a))


def errno_of(fn: object, *args: object) -> int:
    with pytest.raises(KernelError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.errno


def make_cluster(e: DlmEnv, local_addr: str = "127.0.0.1") -> None:
    """A cluster with ourselves as node 1 (the kernel needs a local address to run a lockspace)."""
    e.ctl.mkdir(C)
    e.ctl.write(f"{C}/cluster_name", b"cmk")
    e.ctl.mkdir(f"{C}/comms/1")
    e.ctl.write(f"{C}/comms/1/nodeid", b"1")
    e.ctl.write(f"{C}/comms/1/addr", v4(local_addr))
    e.ctl.write(f"{C}/comms/1/mark", b"0")
    e.ctl.write(f"{C}/comms/1/local", b"1")


# -- configfs ---------------------------------------------------------------------------------


def test_cluster_mkdir_creates_default_groups_and_attributes(env: DlmEnv) -> None:
    assert env.ctl.listdir("") == []
    env.ctl.mkdir(C)
    entries = env.ctl.listdir(C)
    for name in ("comms", "spaces", "cluster_name", "protocol", "tcp_port", "mark", "recover_callbacks"):
        assert name in entries
    assert env.ctl.listdir(f"{C}/comms") == []
    assert env.ctl.read(f"{C}/buffer_size") == b"4096\n"
    assert env.ctl.read(f"{C}/log_info") == b"1\n"
    assert errno_of(env.ctl.mkdir, C) == errno.EEXIST


def test_cluster_attributes_are_ascii_and_read_back_with_newline(env: DlmEnv) -> None:
    env.ctl.mkdir(C)
    env.ctl.write(f"{C}/cluster_name", b"klab")
    assert env.ctl.read(f"{C}/cluster_name") == b"klab\n"
    env.ctl.write(f"{C}/mark", b"0x10")  # kstrtouint base 0
    assert env.ctl.read(f"{C}/mark") == b"16\n"
    env.ctl.write(f"{C}/mark", b"0")
    env.ctl.write(f"{C}/protocol", b"1")
    assert env.ctl.read(f"{C}/protocol") == b"1\n"
    env.ctl.write(f"{C}/protocol", b"0")
    env.ctl.write(f"{C}/tcp_port", b"21065")
    assert env.ctl.read(f"{C}/tcp_port") == b"21065\n"
    env.ctl.write(f"{C}/tcp_port", b"21064")
    env.ctl.write(f"{C}/recover_callbacks", b"1\n")  # one trailing newline is accepted
    assert env.ctl.read(f"{C}/recover_callbacks") == b"1\n"
    env.ctl.write(f"{C}/cluster_name", b"x" * 100)  # cut at 63 bytes, not refused
    assert env.ctl.read(f"{C}/cluster_name") == b"x" * 63 + b"\n"


def test_cluster_attributes_survive_rmdir_because_they_are_kernel_globals(env: DlmEnv) -> None:
    env.ctl.mkdir(C)
    env.ctl.write(f"{C}/cluster_name", b"before")
    env.ctl.rmdir(C)
    env.ctl.mkdir(C)
    assert env.ctl.read(f"{C}/cluster_name") == b"before\n"


def test_bad_attribute_values_raise_einval_with_the_path(env: DlmEnv) -> None:
    env.ctl.mkdir(C)
    for bad in (b"abc", b"0", b"-1"):
        assert errno_of(env.ctl.write, f"{C}/tcp_port", bad) == errno.EINVAL
    assert errno_of(env.ctl.write, f"{C}/protocol", b"2") == errno.EINVAL
    assert errno_of(env.ctl.write, f"{C}/nothere", b"1") == errno.ENOENT
    with pytest.raises(KernelError) as info:
        env.ctl.write(f"{C}/tcp_port", b"abc")
    assert info.value.path.endswith("cluster/tcp_port")
    assert env.ctl.read(f"{C}/tcp_port") == b"21064\n"


def test_mkdir_and_rmdir_follow_configfs_rules(env: DlmEnv) -> None:
    env.ctl.mkdir(C)
    assert errno_of(env.ctl.mkdir, f"{C}/spaces/ls1/nodes/1") == errno.ENOENT
    env.ctl.mkdir(f"{C}/spaces/ls1")
    assert env.ctl.listdir(f"{C}/spaces/ls1") == ["nodes"]
    env.ctl.mkdir(f"{C}/spaces/ls1/nodes/1")
    assert env.ctl.listdir(f"{C}/spaces/ls1/nodes/1") == ["nodeid", "weight"]
    assert env.ctl.read(f"{C}/spaces/ls1/nodes/1/nodeid") == b"-1\n"
    assert env.ctl.read(f"{C}/spaces/ls1/nodes/1/weight") == b"1\n"
    assert errno_of(env.ctl.mkdir, f"{C}/spaces/ls1/other") == errno.EPERM
    assert errno_of(env.ctl.rmdir, f"{C}/spaces/ls1") == errno.ENOTEMPTY
    assert errno_of(env.ctl.rmdir, f"{C}/spaces/ls1/nodes") == errno.EPERM
    assert errno_of(env.ctl.rmdir, C) == errno.ENOTEMPTY
    assert errno_of(env.ctl.rmdir, f"{C}/comms") == errno.EPERM
    assert errno_of(env.ctl.rmdir, f"{C}/comms/7") == errno.ENOENT
    env.ctl.rmdir(f"{C}/spaces/ls1/nodes/1")
    env.ctl.rmdir(f"{C}/spaces/ls1")
    env.ctl.rmdir(C)
    assert not env.ctl.exists(C)


def test_comm_takes_up_to_three_binary_addresses_ipv4_and_ipv6(env: DlmEnv) -> None:
    env.ctl.mkdir(C)
    node = f"{C}/comms/2"
    env.ctl.mkdir(node)
    assert env.ctl.listdir(node) == ["addr", "addr_list", "local", "mark", "nodeid"]
    assert env.ctl.read(f"{node}/nodeid") == b"-1\n"
    assert env.ctl.read(f"{node}/addr_list") == b""
    env.ctl.write(f"{node}/nodeid", b"2")
    # the kernel finds the node for `mark` by its addresses: before the first one it is unknown
    assert errno_of(env.ctl.write, f"{node}/mark", b"0") == errno.ENOENT
    assert errno_of(env.ctl.write, f"{node}/addr", v4("10.213.7.2")[:16]) == errno.EINVAL
    env.ctl.write(f"{node}/addr", v4("10.213.7.2"))
    assert errno_of(env.ctl.write, f"{node}/addr", v4("10.213.7.2")) == errno.EEXIST
    env.ctl.write(f"{node}/addr", v6("fd6b:6c61:62::2"))
    env.ctl.write(f"{node}/addr", v4("10.213.8.2"))
    assert errno_of(env.ctl.write, f"{node}/addr", v4("10.213.9.2")) == errno.ENOSPC
    assert env.ctl.read(f"{node}/addr_list") == (
        b"AF_INET\t10.213.7.2\nAF_INET6\tfd6b:6c61:0062:0000:0000:0000:0000:0002\nAF_INET\t10.213.8.2\n")
    env.ctl.write(f"{node}/mark", b"0")
    assert errno_of(env.ctl.read, f"{node}/addr") == errno.EACCES
    assert errno_of(env.ctl.write, f"{node}/addr_list", b"x") == errno.EACCES
    env.ctl.rmdir(node)
    # removing the comm forgets its addresses: the same node can be configured again
    env.ctl.mkdir(node)
    env.ctl.write(f"{node}/nodeid", b"2")
    env.ctl.write(f"{node}/addr", v4("10.213.7.2"))
    env.ctl.rmdir(node)


def test_clear_stale_removes_a_whole_leftover_tree(env: DlmEnv) -> None:
    make_cluster(env)
    env.ctl.mkdir(f"{C}/spaces/old")
    env.ctl.mkdir(f"{C}/spaces/old/nodes/1")
    removed = clear_stale(env.ctl)
    assert removed == [f"{C}/spaces/old/nodes/1", f"{C}/spaces/old", f"{C}/comms/1", C]
    assert env.ctl.listdir("") == []
    assert clear_stale(env.ctl) == []


# -- sysfs + uevents: a lockspace join and leave answered by hand, as dlm_controld does ---------


async def next_dlm_event(events: AsyncIterator[DlmUevent], lockspace: str) -> LockspaceUevent:
    """Return the next lockspace event of `lockspace` (other events are skipped)."""
    async with asyncio.timeout(EVENT_WAIT_S):
        async for ev in events:
            if isinstance(ev, LockspaceUevent) and ev.lockspace == lockspace:
                return ev
    raise AssertionError("uevent stream ended")


async def wait_result(p: Pending) -> int | None:
    deadline = time.monotonic() + JOIN_WAIT_S
    while time.monotonic() < deadline:
        r = await asyncio.to_thread(p.wait, 0.2)
        if r is not None:
            return r
    return None


async def _join_and_leave(e: DlmEnv) -> None:
    make_cluster(e)
    src = e.uevents()
    await src.start()
    events = src.events()
    try:
        join = e.join("cmk1")
        assert (await next_dlm_event(events, "cmk1")).action == "add"
        assert (await next_dlm_event(events, "cmk1")).action == "online"
        assert e.sysfs.lockspaces() == ["cmk1"]
        assert e.sysfs.read("cmk1", "id") == b"0\n"
        assert join.wait(0.05) is None  # the kernel waits for event_done
        e.sysfs.write("cmk1", "id", b"943331636\0")
        assert e.sysfs.read("cmk1", "id") == b"943331636\n"
        with pytest.raises(KernelError) as info:
            e.sysfs.write("cmk1", "control", b"7\0")
        assert info.value.errno == errno.EINVAL
        e.ctl.mkdir(f"{C}/spaces/cmk1")
        e.ctl.mkdir(f"{C}/spaces/cmk1/nodes/1")
        e.ctl.write(f"{C}/spaces/cmk1/nodes/1/nodeid", b"1")
        e.ctl.write(f"{C}/spaces/cmk1/nodes/1/weight", b"1")
        e.sysfs.write("cmk1", "control", b"1\0")
        e.sysfs.write("cmk1", "event_done", b"0\0")
        assert await wait_result(join) == 0
        assert e.sysfs.read("cmk1", "recover_status") == b"ff\n"  # recovery complete

        leave = e.leave("cmk1")
        assert (await next_dlm_event(events, "cmk1")).action == "offline"
        e.sysfs.write("cmk1", "control", b"0\0")
        e.ctl.rmdir(f"{C}/spaces/cmk1/nodes/1")
        e.ctl.rmdir(f"{C}/spaces/cmk1")
        e.sysfs.write("cmk1", "event_done", b"0\0")
        assert await wait_result(leave) == 0
        assert (await next_dlm_event(events, "cmk1")).action == "remove"
        assert e.sysfs.lockspaces() == []
    finally:
        await src.close()


def test_lockspace_join_and_leave_answered_through_sysfs(env: DlmEnv) -> None:
    asyncio.run(_join_and_leave(env))


async def _join_refused(e: DlmEnv) -> None:
    make_cluster(e)
    src = e.uevents()
    await src.start()
    events = src.events()
    try:
        join = e.join("cmk2")
        assert (await next_dlm_event(events, "cmk2")).action == "add"
        assert (await next_dlm_event(events, "cmk2")).action == "online"
        e.sysfs.write("cmk2", "event_done", b"-5\0")  # refuse the join with EIO
        assert await wait_result(join) == errno.EIO
        assert (await next_dlm_event(events, "cmk2")).action == "remove"
        assert e.sysfs.lockspaces() == []
        with pytest.raises(KernelError) as info:
            e.sysfs.write("cmk2", "control", b"1\0")
        assert info.value.errno == errno.ENOENT
    finally:
        await src.close()


def test_join_refused_by_a_negative_event_done_fails_and_removes_the_lockspace(env: DlmEnv) -> None:
    asyncio.run(_join_refused(env))


# -- pure helpers (no kernel) -------------------------------------------------------------------


def test_sockaddr_storage_layout_matches_dlm_controld() -> None:
    raw4 = sockaddr_storage(ipaddress.IPv4Address("10.213.7.1"))
    assert len(raw4) == 128 and raw4[:8] == bytes([2, 0, 0, 0, 10, 213, 7, 1]) and not any(raw4[8:])
    raw6 = sockaddr_storage(ipaddress.IPv6Address("fd6b:6c61:62::1"))
    assert len(raw6) == 128 and raw6[:2] == bytes([10, 0]) and not any(raw6[2:8])
    assert raw6[8:24] == ipaddress.IPv6Address("fd6b:6c61:62::1").packed and not any(raw6[24:])
    assert parse_sockaddr_storage(raw4) == ipaddress.IPv4Address("10.213.7.1")
    assert parse_sockaddr_storage(raw6) == ipaddress.IPv6Address("fd6b:6c61:62::1")
    assert parse_sockaddr_storage(b"\x01\x00" + bytes(126)) is None


def test_uevent_parser_reads_the_exact_kernel_strings() -> None:
    online = (b"online@/kernel/dlm/lab1\0ACTION=online\0DEVPATH=/kernel/dlm/lab1\0SUBSYSTEM=dlm\0"
              b"LOCKSPACE=lab1\0SEQNUM=1022\0")
    assert parse_dlm_uevent(online) == LockspaceUevent("online", "lab1", 1022)
    change = (b"change@/fs/gfs2/klab:gfs0\0ACTION=change\0DEVPATH=/fs/gfs2/klab:gfs0\0SUBSYSTEM=gfs2\0JID=1\0"
              b"RECOVERY=Done\0LOCKTABLE=klab:gfs0\0LOCKPROTO=lock_dlm\0JOURNALID=0\0SEQNUM=1031\0")
    ev = parse_dlm_uevent(change)
    assert isinstance(ev, Gfs2Uevent) and ev.action == "change" and ev.table == "klab:gfs0"
    assert ev.get("JID") == "1" and ev.get("RECOVERY") == "Done" and ev.seqnum == 1031
    misc = b"add@/devices/virtual/misc/dlm_lab1\0ACTION=add\0SUBSYSTEM=misc\0DEVNAME=dlm_lab1\0SEQNUM=1\0"
    assert parse_dlm_uevent(misc) is None
    assert parse_dlm_uevent(b"libudev\0\xfe\xed") is None
    bogus = b"x@y\0SUBSYSTEM=dlm\0ACTION=bogus\0DEVPATH=/kernel/dlm/a\0"
    for junk in (b"", b"\0\0\0", bogus, bytes(range(256))):
        assert parse_dlm_uevent(junk) is None


# -- kmod: module loading and the configfs mount ---------------------------------------------------


def test_is_mounted_reads_the_mount_table_format(tmp_path: Path) -> None:
    table = tmp_path / "mounts"
    table.write_text("sysfs /sys sysfs rw 0 0\nconfigfs /sys/kernel/config configfs rw,relatime 0 0\n")
    assert is_mounted("/sys/kernel/config", "configfs", str(table))
    assert not is_mounted("/sys/kernel/config", "tmpfs", str(table))
    assert not is_mounted("/sys/kernel/debug", "debugfs", str(table))
    assert not is_mounted("/x", "configfs", str(tmp_path / "missing"))


def test_ensure_dlm_kernel_is_idempotent_on_a_real_kernel() -> None:
    if not real_kernel_available():
        pytest.skip("no kernel DLM here (runs in the VM lab)")
    assert ensure_dlm_kernel() == "/sys/kernel/config/dlm"
    assert ensure_dlm_kernel() == "/sys/kernel/config/dlm"
    assert is_mounted("/sys/kernel/config", "configfs") and is_module_loaded("dlm")
    assert ensure_module("dlm") is False  # already there: no modprobe
