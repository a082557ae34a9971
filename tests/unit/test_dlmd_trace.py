"""dlmd's `kernel:` debug lines are the reference traces' lines: every configfs/sysfs operation
of dlm_controld's trace (shared/kernel-lab/traces), turned into dlmctl's action, is described by
`describe_kernel_action` exactly as the trace wrote it (the VM scenarios compare them)."""

from __future__ import annotations

from cmanlk.dlm.control import ConfigfsMkdir, ConfigfsRmdir, ConfigfsWrite, KernelAction, SysfsWrite
from cmanlk.runtime.dlmd import describe_kernel_action
from tests.unit.test_dlmctl import CONFIGFS, SYSFS, TRACES, trace_ops


def _action(op: tuple[object, ...]) -> KernelAction:
    match op:
        case ("mkdir", str(path)):
            return ConfigfsMkdir(path)
        case ("rmdir", str(path)):
            return ConfigfsRmdir(path)
        case ("write", str(path), bytes(value)):
            return ConfigfsWrite(path, value)
        case ("sysfs", str(ls), str(attr), bytes(value)):
            return SysfsWrite(ls, attr, value)
    raise AssertionError(op)


def test_every_operation_of_the_fencing_trace_is_described_as_the_trace_wrote_it() -> None:
    name = "2node-crash-fencing.node1.protocol.txt"
    ops = trace_ops(name)  # skips when the lab's traces are not there
    lines = [line.split(" ", 1)[1] for line in (TRACES / name).read_text().splitlines()
             if line.split()[1:2] and line.split()[1] in ("mkdir", "rmdir", "write")]
    assert len(ops) == len(lines) > 20
    for op, line in zip(ops, lines, strict=True):
        assert describe_kernel_action(_action(op)) == line
    assert CONFIGFS.rstrip("/") + "/cluster" in lines[0] and any(SYSFS in line for line in lines)
