"""The VM harness itself, without booting anything: QEMU command line and result bookkeeping."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vm.harness import REPO_ROOT, Lab, LabMissing, VmSpec, qemu_command, run_scenario


def fake_lab(tmp_path: Path) -> Lab:
    (tmp_path / "kernel" / "boot").mkdir(parents=True)
    (tmp_path / "kernel" / "boot" / "vmlinuz-6.1.0-56-amd64").write_bytes(b"")
    return Lab(tmp_path)


def test_qemu_command_is_small_isolated_and_shares_the_checkout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMANLK_VM_ACCEL", "tcg")
    lab = fake_lab(tmp_path)
    spec = VmSpec("cmkvm2", "/x/guest.py", ("2", "ipv6"), node=2, disks=(tmp_path / "d.img",))
    argv = qemu_command(lab, spec, tmp_path / "out", tmp_path / "lab", tmp_path / "c.console", "cmkt2")
    line = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64" and "-nodefaults" in argv and "-no-reboot" in argv
    assert argv[argv.index("-m") + 1] == "512" and "tcg,thread=multi,tb-size=256" in argv
    assert f"local,path={tmp_path / 'rootfs'},mount_tag=rootfs,security_model=none,readonly=on" in line
    assert f"local,path={REPO_ROOT},mount_tag=project" in line and f"klab.share={REPO_ROOT}" in line
    assert "klab.run=/x/guest.py" in line and "klab.args=2,ipv6" in line and "klab.udev=1" in line
    assert "klab.ip=10.213.9.2/24" in line and "klab.ip6=fd6b:636d:6b::2/64" in line
    assert "ifname=cmkt2" in line and "cache=none,file.locking=off" in line
    assert "-netdev" not in qemu_command(lab, VmSpec("v", "/s"), tmp_path, tmp_path, tmp_path / "c", None)


def test_an_incomplete_lab_is_reported_not_booted(tmp_path: Path) -> None:
    with pytest.raises(LabMissing):
        run_scenario("x", [VmSpec("v", "/s")], 1.0, lab=Lab(tmp_path))
    with pytest.raises(LabMissing):
        fake_lab(tmp_path).check()  # kernel but no initramfs/rootfs


def test_at_most_three_vms(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"1\.\.3"):
        run_scenario("x", [VmSpec(f"v{i}", "/s") for i in range(4)], 1.0, lab=fake_lab(tmp_path))


def test_runner_keeps_to_jobs_and_the_vm_budget_biggest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    from tests.vm import run as runner
    from tests.vm.scenarios import Scenario

    def sc(name: str, vms: int) -> Scenario:
        return Scenario(name, "", tuple(VmSpec(f"v{i}", "/s") for i in range(vms)), 1.0)

    lock = threading.Lock()
    active: list[Scenario] = []
    seen: list[tuple[str, int, int]] = []  # (started, scenarios running, VMs running)

    def fake(s: Scenario, stop: threading.Event) -> tuple[str, str, bool]:
        with lock:
            active.append(s)
            seen.append((s.name, len(active), sum(len(x.vms) for x in active)))
        time.sleep(0.3)
        with lock:
            active.remove(s)
        return f"PASS {s.name}", "", s.name != "b"

    monkeypatch.setattr(runner, "_run_one", fake)
    lines: list[str] = []
    chosen = [sc("a", 1), sc("b", 2), sc("c", 3), sc("d", 3), sc("e", 1)]
    failed = runner.run_all(chosen, 2, threading.Event(), lambda line, tail: lines.append(line))
    assert failed == 1 and sorted(lines) == [f"PASS {n}" for n in "abcde"]
    assert [name for name, *_ in seen][:2] == ["c", "b"]  # the 3-VM scenarios first, then what fits
    assert all(running <= 2 and vms <= runner.MAX_PARALLEL_VMS for _, running, vms in seen)

    stop = threading.Event()
    stop.set()
    assert runner.run_all(chosen, 2, stop, lambda line, tail: lines.append(line)) == len(chosen)
