"""cmanlk's VM harness: boot 1..3 QEMU VMs with Debian's kernel, run a guest script in each, collect.

It reuses what the shared kernel lab builds under $KLAB_DIR (default /var/tmp/kernel-lab; made
by shared/kernel-lab/setup.sh): the kernel, the busybox initramfs whose stage-2 init
(`klab-init`) reads `klab.*` kernel parameters, and the debootstrap'ed root folder shared
read-only over 9p with a tmpfs overlay. Everything else is ours: the QEMU command line, a
private network namespace with a bridge per run, the checkout shared read-write at its own
path (so a guest runs the code under test), per-VM result folders, time limits and cleanup.

Accelerator: TCG (software), as in the lab: the build machines' /dev/kvm is a PVM hypervisor
that cannot run a stock kernel. KVM is used only where kvm_intel/kvm_amd is loaded.
Memory: `-m 512` and a 256 MiB translation cache keep one VM near 700 MiB of host RSS.

Cleanup is unconditional: every qemu process is killed (process group) and the namespace is
deleted, also when a scenario fails or times out, or the harness itself is interrupted.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
KLAB_DIR = Path(os.environ.get("KLAB_DIR", "/var/tmp/kernel-lab"))
MAX_VMS = 3
"""At most 3 VMs at once: each costs ~700 MiB host RSS and a share of the 2 host cores."""
DEFAULT_MEM_MB = 512
TB_SIZE_MB = 256
SUBNET = "10.213.9"
"""Guest addresses <SUBNET>.<n>/24; only inside our own namespace (the lab's uses 10.213.7)."""
SUBNET6 = "fd6b:636d:6b::"
"""And the IPv6 ULAs <SUBNET6><n>/64 on the same bridge."""
KILL_GRACE_S = 5.0
POLL_S = 0.5
"""How often the harness checks for finished VMs and samples their memory."""


class LabMissing(RuntimeError):
    """The kernel lab (kernel, initramfs, rootfs) is not built."""


@dataclass(frozen=True)
class Lab:
    """Paths of the shared lab's build products."""

    root: Path = KLAB_DIR

    @property
    def rootfs(self) -> Path:
        return self.root / "rootfs"

    @property
    def initrd(self) -> Path:
        return self.root / "initramfs.cpio.gz"

    @property
    def kernel(self) -> Path:
        found = sorted((self.root / "kernel" / "boot").glob("vmlinuz-*"))
        if not found:
            raise LabMissing(f"no kernel in {self.root}/kernel/boot (run scripts/vm-tests.sh --setup)")
        return found[0]

    def check(self) -> None:
        """Raise LabMissing unless the kernel, initramfs, rootfs and qemu are present."""
        _ = self.kernel
        if not self.initrd.is_file() or not (self.rootfs / "usr/bin/python3").exists():
            raise LabMissing(f"lab under {self.root} is incomplete (run scripts/vm-tests.sh --setup)")
        if shutil.which("qemu-system-x86_64") is None:
            raise LabMissing("qemu-system-x86_64 is not installed")


@dataclass(frozen=True)
class VmSpec:
    """One VM of a scenario. `script` is a path inside the guest (the checkout is at its own path)."""

    name: str
    script: str
    args: tuple[str, ...] = ()
    node: int | None = None
    """With a node number the VM gets eth0 = <SUBNET>.<node>/24 on the scenario's bridge."""
    mem_mb: int = DEFAULT_MEM_MB
    udev: bool = True
    """systemd-udevd in the guest: libdlm needs its /dev/misc/dlm* links."""
    disks: tuple[Path, ...] = ()


@dataclass
class VmResult:
    """What one VM left behind: exit code of its script (None: no result), timings, log."""

    name: str
    exit_code: int | None
    seconds: float
    console: Path
    out_dir: Path
    timed_out: bool = False

    def console_tail(self, lines: int = 60) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.replace("\r", "").splitlines()[-lines:])


@dataclass
class Run:
    """A scenario run: its folder (shared as /lab in every guest) and its results."""

    name: str
    folder: Path
    results: list[VmResult] = field(default_factory=list)
    peak_rss_mb: int = 0
    """Largest sum of the qemu processes' resident memory seen while the VMs ran."""

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.exit_code == 0 for r in self.results)


def accelerator() -> str:
    """Return "kvm" where hardware virtualization works, else "tcg" (env CMANLK_VM_ACCEL overrides)."""
    forced = os.environ.get("CMANLK_VM_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    hw = Path("/sys/module/kvm_intel").is_dir() or Path("/sys/module/kvm_amd").is_dir()
    return "kvm" if hw and os.access("/dev/kvm", os.W_OK) else "tcg"


def qemu_command(lab: Lab, spec: VmSpec, out_dir: Path, lab_dir: Path, console: Path,
                 tap: str | None) -> list[str]:
    """Return the qemu argv for `spec` (no network wrapper)."""
    cmdline = [
        "console=ttyS0", "loglevel=4", "panic=-1", "rdinit=/init", f"klab.host={spec.name}",
        f"klab.share={REPO_ROOT}", f"klab.run={spec.script}",
    ]
    if spec.args:
        cmdline.append("klab.args=" + ",".join(spec.args))
    if spec.node is not None:
        cmdline += [f"klab.ip={SUBNET}.{spec.node}/24", f"klab.ip6={SUBNET6}{spec.node}/64"]
    if spec.udev:
        cmdline.append("klab.udev=1")
    argv = [
        "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-M", "pc", "-m", str(spec.mem_mb), "-smp", "1",
        "-kernel", str(lab.kernel), "-initrd", str(lab.initrd), "-append", " ".join(cmdline),
        "-virtfs",
        f"local,path={lab.rootfs},mount_tag=rootfs,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={out_dir},mount_tag=out,security_model=none,multidevs=remap",
        "-virtfs", f"local,path={lab_dir},mount_tag=lab,security_model=none,multidevs=remap",
        "-virtfs", f"local,path={REPO_ROOT},mount_tag=project,security_model=none,multidevs=remap",
        "-serial", f"file:{console}", "-pidfile", str(console.with_suffix(".pid")),
    ]
    if accelerator() == "kvm":
        argv += ["-accel", "kvm", "-cpu", "host,-arch-capabilities"]
    else:
        argv += ["-accel", f"tcg,thread=multi,tb-size={TB_SIZE_MB}", "-cpu", "max"]
    for i, disk in enumerate(spec.disks):
        argv += ["-drive", f"file={disk},format=raw,if=none,id=disk{i},cache=none,file.locking=off",
                 "-device", f"virtio-blk-pci,drive=disk{i},serial=cmk{i}"]
    if tap is not None:
        mac = f"52:54:00:cb:{os.getpid() % 256:02x}:{spec.node or 0:02x}"
        argv += ["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                 "-device", f"virtio-net-pci,netdev=n0,mac={mac}"]
    return argv


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


_SLOTS = iter(range(1, 1 << 30))
_SLOTS_LOCK = threading.Lock()


@contextlib.contextmanager
def private_network(prefix: str) -> Iterator[str]:
    """A network namespace with one bridge and no way out; yields its name, deletes it after.

    Named <prefix><pid>x<n>: one per concurrent scenario of this harness process.
    """
    with _SLOTS_LOCK:
        slot = next(_SLOTS)
    ns = f"{prefix}{os.getpid()}x{slot}"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        _ip("-n", ns, "link", "set", "br0", "up")
        yield ns
    finally:
        _kill_netns_processes(ns)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20, check=False)


def _kill_netns_processes(ns: str) -> None:
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=20,
                          check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _add_tap(ns: str, tap: str) -> None:
    _ip("-n", ns, "tuntap", "add", "dev", tap, "mode", "tap")
    _ip("-n", ns, "link", "set", tap, "master", "br0")
    _ip("-n", ns, "link", "set", tap, "up")


def reap_stale(lab: Lab | None = None) -> list[str]:
    """Clean up after harness runs that died without their cleanup (SIGKILL, OOM, power loss).

    Only our own objects: namespaces named cmkvm<pid>x<n> and qemu processes whose pidfile lies in
    a result folder <scenario>-<time>-<pid>, in both cases only when that harness pid is gone.
    Returns what was removed.
    """
    lab = lab or Lab()
    removed: list[str] = []
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20,
                             check=False).stdout
    for ns in re.findall(r"^(cmkvm(\d+)x\d*)\b", listing, re.MULTILINE):
        if not _pid_alive(int(ns[1])):
            _kill_netns_processes(ns[0])
            subprocess.run(["ip", "netns", "del", ns[0]], capture_output=True, timeout=20, check=False)
            removed.append(f"netns {ns[0]}")
    for pidfile in (lab.root / "run" / "cmanlk").glob("*-*-*/*.pid"):
        owner = pidfile.parent.name.rsplit("-", 1)[-1]
        if not owner.isdigit() or _pid_alive(int(owner)):
            continue
        with contextlib.suppress(OSError, ValueError):
            qpid = int(pidfile.read_text().strip())
            if b"qemu-system" in Path(f"/proc/{qpid}/cmdline").read_bytes():
                os.kill(qpid, signal.SIGKILL)
                removed.append(f"qemu {qpid}")
        pidfile.unlink(missing_ok=True)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_scenario(name: str, specs: Sequence[VmSpec], timeout_s: float, lab: Lab | None = None,
                 keep: int = 5, shared_disk_mb: int = 0, stop: threading.Event | None = None) -> Run:
    """Boot every VM of `specs` in parallel, wait for all (at most `timeout_s`), collect results.

    Returns a Run whose `folder` holds <vm>.console, out/<vm>/ (the guest's /out) and the /lab
    folder shared by all VMs. Raises LabMissing if the lab is not built, ValueError for more than
    MAX_VMS VMs. With `shared_disk_mb`, a sparse raw image of that size (a GFS2 disk) is
    attached to every VM as /dev/vda (cache=none, no image locking, as the lab does).
    Always kills the VMs and removes the namespace before returning; a set `stop` (the runner
    was interrupted) ends the wait early like a time limit. Several scenarios may run at once in
    threads of one process: each has its own namespace, folder and disk.
    """
    if not 1 <= len(specs) <= MAX_VMS:
        raise ValueError(f"a scenario runs 1..{MAX_VMS} VMs, not {len(specs)}")
    lab = lab or Lab()
    lab.check()
    for what in reap_stale(lab):
        print(f"vm harness: removed stale {what}", file=sys.stderr)
    runs = lab.root / "run" / "cmanlk"
    folder = runs / f"{name}-{time.strftime('%H%M%S')}-{os.getpid()}"
    (folder / "lab").mkdir(parents=True)
    _prune(runs, name, keep)
    run = Run(name, folder)
    if shared_disk_mb:
        disk = folder / "shared.img"
        with open(disk, "wb") as f:
            f.truncate(shared_disk_mb << 20)
        specs = [VmSpec(s.name, s.script, s.args, s.node, s.mem_mb, s.udev, (disk, *s.disks)) for s in specs]
    needs_net = any(s.node is not None for s in specs)
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(private_network("cmkvm")) if needs_net else None
        procs: list[tuple[VmSpec, subprocess.Popen[bytes], Path, Path, float]] = []
        try:
            for spec in specs:
                out_dir = folder / "out" / spec.name
                out_dir.mkdir(parents=True)
                console = folder / f"{spec.name}.console"
                tap = None
                argv_prefix: list[str] = []
                if spec.node is not None and ns is not None:
                    tap = f"cmkt{spec.node}"
                    _add_tap(ns, tap)
                    argv_prefix = ["ip", "netns", "exec", ns]
                argv = argv_prefix + qemu_command(lab, spec, out_dir, folder / "lab", console, tap)
                (folder / f"{spec.name}.argv").write_text(" ".join(argv) + "\n")
                with open(folder / f"{spec.name}.qemu-stderr", "wb") as err:
                    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err, start_new_session=True)
                procs.append((spec, p, out_dir, console, time.monotonic()))
            deadline = time.monotonic() + timeout_s
            ended: dict[int, float] = {}
            while len(ended) < len(procs) and time.monotonic() < deadline and not (stop and stop.is_set()):
                for i, (_, p, *_rest) in enumerate(procs):
                    if i not in ended and p.poll() is not None:
                        ended[i] = time.monotonic()
                alive = [p.pid for i, (_, p, *_rest) in enumerate(procs) if i not in ended]
                run.peak_rss_mb = max(run.peak_rss_mb, sum(_rss_mb(pid) for pid in alive))
                time.sleep(POLL_S)
            for i, (spec, p, out_dir, console, t0) in enumerate(procs):
                timed_out = i not in ended
                if timed_out:
                    _kill(p)
                took = ended.get(i, time.monotonic()) - t0
                code = _exit_code(out_dir)
                run.results.append(VmResult(spec.name, code, took, console, out_dir, timed_out))
        finally:
            for _, p, *_rest in procs:
                _kill(p)
    return run


def _kill(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=KILL_GRACE_S)


def _rss_mb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _exit_code(out_dir: Path) -> int | None:
    try:
        return int((out_dir / "exit-code").read_text().strip())
    except (OSError, ValueError):
        return None


def _prune(runs: Path, name: str, keep: int) -> None:
    """Keep only the newest `keep` result folders of scenario `name`."""
    old = sorted(runs.glob(f"{name}-*"), key=lambda p: p.stat().st_mtime)
    for p in old[:-keep] if keep > 0 else old:
        shutil.rmtree(p, ignore_errors=True)
