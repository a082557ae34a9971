"""Debian's pacemaker 2.1 inside a node's network namespace, for the system tests
(test_pacemaker.py on cmanlkd, test_migration.py on corosync and cmanlkd).

pacemakerd runs in its own mount and UTS namespaces: its host name is the node's name (n1, n2, …,
as the nodelist says), and /var/lib/pacemaker, /var/log/pacemaker and /run are the node's own
directories under `base` (the test's workdir), bound over the host's. /run must be the node's own:
ocf:pacemaker:Dummy keeps its state in /run/Dummy-<id>.state (HA_VARRUN), so with the host's /run
every node's probe would find every node's resources running. Nothing on the host changes.
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
from pathlib import Path

PACEMAKERD = "/usr/sbin/pacemakerd"


def missing() -> str | None:
    """Why pacemaker cannot run here, or None."""
    for tool in (PACEMAKERD, "crm_mon", "unshare", "corosync-cmapctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh installs it)"
    try:
        pwd.getpwnam("hacluster")
    except KeyError:
        return "no hacluster user (the pacemaker package creates it)"
    return None


def cib(resources: tuple[str, ...], monitor: str, stickiness: int | None = None) -> str:
    """The CIB a test's nodes start from: fencing off (no fence devices in namespaces), a short
    dc-deadtime, one ocf:pacemaker:Dummy primitive per name in `resources` monitored every
    `monitor`, and, with `stickiness`, that resource-stickiness as the default."""
    primitives = "".join(
        f"""      <primitive id="{r}" class="ocf" provider="pacemaker" type="Dummy">
        <operations>
          <op id="{r}-monitor" name="monitor" interval="{monitor}" timeout="20s"/>
        </operations>
      </primitive>
"""
        for r in resources
    )
    defaults = (
        ""
        if stickiness is None
        else f"""    <rsc_defaults>
      <meta_attributes id="rsc-options">
        <nvpair id="rsc-options-stickiness" name="resource-stickiness" value="{stickiness}"/>
      </meta_attributes>
    </rsc_defaults>
"""
    )
    return f"""\
<cib crm_feature_set="3.16.1" validate-with="pacemaker-3.9" epoch="5" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="opt-stonith-enabled" name="stonith-enabled" value="false"/>
        <nvpair id="opt-dc-deadtime" name="dc-deadtime" value="5s"/>
        <nvpair id="opt-cluster-recheck" name="cluster-recheck-interval" value="30s"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources>
{primitives}    </resources>
    <constraints/>
{defaults}  </configuration>
  <status/>
</cib>
"""


def prepare(base: Path, cib: str | None) -> None:
    """Make the node's directories; with `cib`, write it as the CIB pacemaker starts from (a
    restart without one keeps what pacemaker saved)."""
    subs = ("lib/cib", "lib/pengine", "lib/blackbox", "lib/cores", "log", "run/crm", "run/resource-agents")
    for sub in subs:
        (base / sub).mkdir(parents=True, exist_ok=True)
    if cib is not None:
        path = base / "lib/cib/cib.xml"
        path.write_text(cib)
        path.chmod(0o600)
    subprocess.run(["chown", "-R", "hacluster:haclient", str(base)], check=True, timeout=10)
    subprocess.run(["chown", "root:root", str(base / "run")], check=True, timeout=10)
    (base / "run").chmod(0o755)
    (base / "run/crm").chmod(0o750)


def command(base: Path, node: int) -> list[str]:
    """The command that runs pacemakerd -f for node `node` (start it inside the node's namespace)."""
    script = (
        f"mount --bind {base}/lib /var/lib/pacemaker && mount --bind {base}/log /var/log/pacemaker"
        f" && mount --bind {base}/run /run && hostname n{node} && exec {PACEMAKERD} -f"
    )
    return ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", script]


def clean_shm(before: set[str], pids: set[str]) -> None:
    """Remove the /dev/shm files libqb left for connections of our processes that were killed."""
    for path in Path("/dev/shm").glob("qb-*"):
        parts = path.name.split("-")
        if path.name not in before and len(parts) > 2 and (parts[1] in pids or parts[2] in pids):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
