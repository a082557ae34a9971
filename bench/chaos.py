"""Chaos soak: real cmanlkd daemons in namespaces, random faults, EVS invariants on what clients saw.

    sudo .venv/bin/python -m bench.chaos --duration 120 [--nodes 4] [--seed N] [--transport udpu|knet]
                                          [--token 300] [--rate 50] [--keep-workdir]
    sudo .venv/bin/python -m bench.chaos --mixed [--corosync-nodes 1,2] --nodes 4 --token 1000 --size 200 ...

`--mixed`: a mixed ring over udpu — Debian's corosync on `--corosync-nodes` (default: the lower
half), cmanlkd on the others; the clients on corosync nodes are libcpg programs (bench/cpg_ctypes.py,
the driver's corosync backend), the others cmanlk.client; one EVS checker judges them all, so a
message delivered by a libcpg client in one view and by a cmanlk client in another is a
virtual-synchrony violation like any other.

One group client per node (bench/driver.py in soak mode) sends small uniquely named messages at
`--rate` per second and records its history: (re)connections, sends, deliveries and the totem
configuration changes CPG reports. Meanwhile faults are drawn from a seeded random.Random:
kill -9 of a daemon, restart, clean stop (SIGTERM), a partition (nftables inside the namespaces),
a carrier loss on a link, and random packet loss, each held for a random time; at most
`--max-faults` at once. After `--duration` seconds every fault is healed, every daemon restarted,
the ring must re-form within a bound, traffic flows for a while and then stops.

The histories are turned into the simulator's records (`to_history`: one client connection =
one EVS process; a lost connection = a crash) and checked by the simulator's own checker,
cmanlk/sim/invariants.py, with `settled=True` and a liveness bound. What CPG does not let a
client observe is mapped, never dropped, as follows:
- ``transitional``: CPG clients see only regular configurations; the adapter inserts the
  transitional configuration the client can infer (old ∩ new members) so the shape checks hold,
  but its exact membership is not what a client can verify: not judged.
- ``agreed`` for a ring whose members did not all move on to the same next ring: without the
  transitional marker, gaps that EVS allows after a partition look like agreed-order gaps: not
  judged for such rings (virtual synchrony still is, for those that moved on together).
- A client that joins the group inside a ring (every client's first configuration, and every
  restarted client's) is told that ring at its join and gets only the messages ordered after
  its PROCJOIN. Its first epoch gets a private ring id for the checker (`private_join_epochs`)
  and is judged by `join_epoch_violations` from its join point — its first delivery: same
  membership, no gap against any other member after it, and the same messages as every member
  that moved on to the same next ring. Not observable: messages ordered between its PROCJOIN and
  its first delivery, and a joining epoch that delivered nothing. Liveness is judged on the
  original ring ids; a client that joined in the final configuration is not owed what was
  delivered before it joined (`late_join_excuses`).
- A repeated view (same ring, same members) is one configuration (see `to_history`).
- Two lapses of corosync itself, with `--mixed`: a corosync sender's backlog that corosync's own
  receive rule throws away at a member new to the sender's old ring (`corosync_continuation_losses`,
  counted and printed; those messages are not judged), and a ring seq that a restarted corosync
  begins again after a kill -9 left its ringid file empty (`Chaos.start`, set aside once per such
  restart, noted in the fault log).
Everything else — config agreement, ring seqs growing across restarts, delivery in a
configuration holding the sender, no spurious or duplicate delivery, one total order, FIFO,
virtual synchrony, self-delivery and liveness — is checked as in the simulator.

Prints `violations=0`, or the first violation with its history excerpt (and the count). Exit
status 0 only without violations.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import systems
from bench.cluster import BenchCluster, DriverError
from bench.netns import Lab
from cmanlk.sim import invariants
from cmanlk.sim.history import Booted, Crashed, Delivered, Installed, Record, Sent, label
from cmanlk.sim.invariants import LivenessSpec, Violation, check
from cmanlk.totem.actions import ConfigKind
from cmanlk.types import Duration, Instant, NodeId, RingId

HISTORY_DRAIN_S = 2.0  # drain driver histories this often (bounded driver memory)
SETTLE_TRAFFIC_S = 3.0  # traffic after the final ring formed, all of which must be delivered everywhere
DRAIN_S = 3.0  # quiet time after traffic stops, so the last messages reach every client
UNJUDGED = ("transitional",)
RINGID_BYTES = 8  # corosync's ringid_<nodeid> file: one u64 ring seq


# -- adapting driver records to simulator histories (pure) ----------------------------------------
def to_history(records: Iterable[list[Any]]) -> list[Record]:
    """Convert one node's driver records into simulator history records.

    Records: ["boot", t], ["crash", t], ["sent", t, hex], ["deliver", t, rep, seq, sender, hex],
    ["config", t, rep, seq, members]. A configuration after the first one of an incarnation is
    preceded by the transitional configuration the client can infer (previous ∩ new members); a
    repeat of the current view is dropped. Raises ValueError on an unknown record kind.
    """
    out: list[Record] = []
    prev: tuple[NodeId, ...] | None = None
    prev_ring: RingId | None = None
    for rec in records:
        kind, t = rec[0], Instant(int(rec[1]))
        if kind == "boot":
            out.append(Booted(t, 0))
            prev = prev_ring = None
        elif kind == "crash":
            out.append(Crashed(t))
            prev = prev_ring = None
        elif kind == "sent":
            out.append(Sent(t, bytes.fromhex(rec[2])))
        elif kind == "deliver":
            ring = RingId(int(rec[3]), NodeId(int(rec[2])))
            out.append(Delivered(t, ring, NodeId(int(rec[4])), bytes.fromhex(rec[5])))
        elif kind == "config":
            ring = RingId(int(rec[3]), NodeId(int(rec[2])))
            members = tuple(NodeId(int(m)) for m in sorted(rec[4]))
            if ring == prev_ring and members == prev:
                # The same view again: a connection whose join is pending gets the ring's totem
                # confchg with every connection at sync_activate, then the initial one when its
                # PROCJOIN is applied (corosync cpg.c does the same: the broadcast goes to every
                # cpg_pd, the initial view to a joiner whose initial_totem_conf_sent is 0). One
                # configuration, not a second installation of it.
                continue
            prev_ring = ring
            if prev is not None:
                trans = tuple(m for m in members if m in prev)
                out.append(Installed(t, ConfigKind.TRANSITIONAL, ring, trans))
            out.append(Installed(t, ConfigKind.REGULAR, ring, members))
            prev = members
        else:
            raise ValueError(f"unknown history record {kind!r}")
    return out


def split_rings(histories: dict[NodeId, list[Record]]) -> set[str]:
    """Rings (as printed) whose members did not all go on to one same next configuration."""
    nexts: dict[str, set[str]] = {}
    for recs in histories.values():
        current: str | None = None
        for rec in recs:
            if isinstance(rec, Installed) and rec.kind is ConfigKind.REGULAR:
                if current is not None:
                    nexts.setdefault(current, set()).add(str(rec.ring_id))
                current = str(rec.ring_id)
            elif isinstance(rec, Crashed | Booted):
                if current is not None:
                    nexts.setdefault(current, set()).add("<end>")
                current = None
        if current is not None:
            nexts.setdefault(current, set()).add("<end-of-run>")
    return {ring for ring, after in nexts.items() if len(after) > 1}


def view_splits(histories: dict[NodeId, list[Record]]) -> dict[bytes, set[RingId]]:
    """Messages that clients delivered in different configurations: payload → the rings (views) it
    was delivered in, for every payload delivered in more than one. Virtual synchrony allows none;
    the checker reports them too, this is the figure (issue 16: a mixed ring split hundreds per
    ring change, libcpg clients before the change and cmanlk clients after it)."""
    seen: dict[bytes, set[RingId]] = {}
    for recs in histories.values():
        for rec in recs:
            if isinstance(rec, Delivered):
                seen.setdefault(rec.payload, set()).add(rec.ring_id)
    return {p: rings for p, rings in seen.items() if len(rings) > 1}


JOIN_REP_BASE = 0xF000_0000
"""Representatives of the private rings given to joining epochs (far above any node id of a run)."""


@dataclass(frozen=True)
class JoinEpoch:
    """The first configuration of a client incarnation: it joined the group inside ring `ring`."""

    node: NodeId
    ring: RingId
    private: RingId  # the ring id the checker sees for this epoch instead of `ring`
    members: tuple[NodeId, ...]
    delivered: tuple[bytes, ...]
    next_ring: RingId | None  # the incarnation's next configuration (None: it ended first)
    at: int  # record index of the installation


@dataclass(frozen=True)
class _Lived:
    """One regular configuration as one incarnation lived it (original ring ids)."""

    node: NodeId
    incarnation: int
    ring: RingId
    members: tuple[NodeId, ...]
    delivered: tuple[bytes, ...]
    next_ring: RingId | None
    joined: bool  # the incarnation's first configuration
    at: int


def _lived(recs: list[Record], node: NodeId) -> list[_Lived]:
    out: list[_Lived] = []
    inc = 0
    cur: tuple[Installed, int, bool] | None = None  # (installation, record index, first of its incarnation)
    got: list[bytes] = []
    first = True

    def close(next_ring: RingId | None) -> None:
        if cur is not None:
            rec = cur[0]
            out.append(_Lived(node, inc, rec.ring_id, rec.members, tuple(got), next_ring, cur[2], cur[1]))

    for i, rec in enumerate(recs):
        if isinstance(rec, Booted | Crashed):
            close(None)
            cur, got, first = None, [], True
            inc += isinstance(rec, Booted)
        elif isinstance(rec, Installed) and rec.kind is ConfigKind.REGULAR:
            close(rec.ring_id)
            cur, got, first = (rec, i, first), [], False
        elif isinstance(rec, Delivered) and cur is not None:
            got.append(rec.payload)
    close(None)
    return out


def private_join_epochs(
    histories: dict[NodeId, list[Record]],
) -> tuple[dict[NodeId, list[Record]], list[JoinEpoch]]:
    """Give every client incarnation's first configuration a private ring id; return the
    relabelled histories and those epochs.

    Why: the checker's EVS process installs a configuration when the ring forms and delivers the
    whole of it. A CPG process that joins a group while a ring R is up (a restarted client, or any
    client at the start) gets R's totem view at its join (CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF)
    and only the messages ordered after its PROCJOIN (corosync cpg.c delivers a group's messages
    to JOIN_COMPLETED handles only). Judged as a member of R from R's start, it "misses" what the
    others delivered before its join: agreed-order and virtual-synchrony findings that are not
    faults. Under a private ring id the checker judges this epoch alone (and everything else —
    order, duplicates, FIFO, sender membership, ring seqs — as before); `join_epoch_violations`
    then judges it against R's other members with the join point taken into account.
    """
    out: dict[NodeId, list[Record]] = {}
    epochs: list[JoinEpoch] = []
    for node in sorted(histories):
        recs = list(histories[node])
        for lived in _lived(recs, node):
            if not lived.joined:
                continue
            private = RingId(lived.ring.seq, NodeId(JOIN_REP_BASE + len(epochs)))
            epochs.append(
                JoinEpoch(
                    node, lived.ring, private, lived.members, lived.delivered, lived.next_ring, lived.at
                )
            )
            first = recs[lived.at]
            assert isinstance(first, Installed)
            recs[lived.at] = replace(first, ring_id=private)
            for j in range(lived.at + 1, len(recs)):
                rec = recs[j]
                if isinstance(rec, Installed | Booted | Crashed):
                    break
                if isinstance(rec, Delivered) and rec.ring_id == lived.ring:
                    recs[j] = replace(rec, ring_id=private)
        out[node] = recs
    return out, epochs


def join_epoch_violations(histories: dict[NodeId, list[Record]], epochs: list[JoinEpoch]) -> list[Violation]:
    """Judge each joining epoch against the other epochs of the same ring (original histories).

    Its first delivery marks its join point in the agreed order. From there, it and any other
    member deliver one sequence (agreed: one is a prefix of the other); when both go on to the same
    next configuration they deliver exactly the same messages after the join point (virtual
    synchrony). Another joiner that joined later than our first delivery is judged the other way
    round. Not observable: messages ordered between the PROCJOIN and our first delivery, and an
    epoch that delivered nothing (its join point is unknown). Members of the ring must agree
    (config-agreement, which the checker no longer sees across the private ring id).
    """
    by_ring: dict[RingId, list[_Lived]] = {}
    for node, recs in histories.items():
        for lived in _lived(recs, node):
            by_ring.setdefault(lived.ring, []).append(lived)
    found: list[Violation] = []
    for ep in epochs:
        mine = ep.delivered
        for other in by_ring.get(ep.ring, []):
            if other.node == ep.node and other.at == ep.at:
                continue
            if other.members != ep.members:
                found.append(
                    Violation(
                        "config-agreement",
                        ep.node,
                        f"joined {ep.ring} with members {list(ep.members)}, node {other.node} has "
                        f"{list(other.members)}",
                        str(ep.ring),
                    )
                )
            theirs = other.delivered
            if not mine or (other.joined and not theirs):
                continue  # a join point is unknown without a delivery (not observable)
            together = ep.next_ring is not None and ep.next_ring == other.next_ring
            where = f"joined {ep.ring} (private {ep.private}); node {other.node}"
            if mine[0] not in theirs:
                if other.joined and theirs and theirs[0] in mine:
                    continue  # it joined after our first delivery: judged from its own epoch
                if together:
                    found.append(
                        Violation(
                            "virtual-synchrony",
                            ep.node,
                            f"{where} moved to {ep.next_ring} too but never delivered {label(mine[0])} "
                            f"(our first delivery in {ep.ring})",
                            str(ep.ring),
                        )
                    )
                continue
            tail = theirs[theirs.index(mine[0]) :]
            n = min(len(tail), len(mine))
            if tail[:n] != mine[:n]:
                k = next(i for i in range(n) if tail[i] != mine[i])
                found.append(
                    Violation(
                        "agreed",
                        ep.node,
                        f"{where} delivered {label(tail[k])} where we delivered {label(mine[k])} "
                        f"(#{k + 1} after our join)",
                        str(ep.ring),
                    )
                )
            elif together and len(tail) != len(mine):
                longer, who = (tail, f"node {other.node}") if len(tail) > len(mine) else (mine, "we")
                found.append(
                    Violation(
                        "virtual-synchrony",
                        ep.node,
                        f"{where} moved to {ep.next_ring} too, but after our join {who} also delivered "
                        f"{[label(m) for m in longer[n : n + 5]]}",
                        str(ep.ring),
                    )
                )
    return found


LATE_JOIN_SLACK_NS = 50_000_000  # deliveries this close to a client's join may precede it in order


def _last_incarnation(recs: list[Record]) -> list[Record]:
    start = max((i for i, r in enumerate(recs) if isinstance(r, Booted)), default=0)
    return recs[start:]


def late_join_excuses(histories: dict[NodeId, list[Record]], node: NodeId) -> bool:
    """True when everything `node`'s last client missed in the final configuration was delivered
    elsewhere before that client joined (plus a slack): a CPG process gets messages from its join on.
    """
    mine = _last_incarnation(histories.get(node, []))
    joined_at = next((r.t for r in mine if isinstance(r, Installed)), None)
    if joined_at is None:
        return False
    got = {r.payload for r in mine if isinstance(r, Delivered)}
    for other, recs in histories.items():
        if other == node:
            continue
        inc = _last_incarnation(recs)
        if any(isinstance(r, Crashed) for r in inc):
            continue
        final = max((i for i, r in enumerate(inc) if isinstance(r, Installed)), default=None)
        if final is None:
            continue
        for r in inc[final:]:
            if not isinstance(r, Delivered):
                continue
            if r.t >= joined_at + LATE_JOIN_SLACK_NS and r.payload not in got:
                return False
    return True


def corosync_continuation_losses(
    histories: dict[NodeId, list[Record]], corosync_nodes: frozenset[NodeId]
) -> set[bytes]:
    """Messages of a corosync sender that corosync's own receive rule loses at some members.

    The fault is corosync's (exec/totempg.c, 3.1.7), and a corosync-only ring has it too: corosync
    packs eagerly, so the frames of its send backlog are built before they go out, and a ring change
    may fall between a frame that ends with the head of a message (sent in the old ring) and the
    frame that continues it (still queued, sent in the new ring once its sync is over). A member of
    the new ring that was not in the sender's old ring has no head for it, and totempg_deliver_fn
    throws that frame away whole, then every later frame of the sender up to one whose
    `fragmented` is 0 or 1 (which goes too): with a backlog of equal-sized messages that is a run
    of ~115 messages of 200 bytes. The sender and the members that came with it from the old ring
    deliver them. Our receive side is corosync's exactly (cmanlk/totem/totempg.py `Unpacker`), so a
    cmanlkd member loses the same messages as a corosync member would; our own sender never ends a
    token visit inside a message (same docstring), so only corosync senders are excused here.

    Returned (and then not judged anywhere): for a regular configuration R, a corosync sender S's
    epoch in R that is not its first, and a member X of R that did not come from S's previous
    configuration (another previous ring, or X's first configuration: in bench.chaos a client
    reconnects only when its daemon went away, so its daemon is new to the ring): the run of S's
    own messages in R, in S's order, before X's first delivery of S's messages — but only if X
    delivered some, every message of the run was sent before S installed R (the backlog queued in
    the old ring), and every member of R that came from S's previous configuration delivered the
    whole run; for X's first configuration only the part S delivered after X's join point (X's
    first delivery). Anything else X misses is still judged.
    """
    sender_of: dict[bytes, NodeId] = {}
    sent_at: dict[bytes, int] = {}
    for recs in histories.values():
        for rec in recs:
            if isinstance(rec, Delivered):
                sender_of.setdefault(rec.payload, rec.sender)
            elif isinstance(rec, Sent):
                sent_at.setdefault(rec.payload, rec.t)
    by_ring: dict[RingId, list[tuple[_Lived, RingId | None, int]]] = {}
    for node, recs in histories.items():
        prev: _Lived | None = None
        for lived in _lived(recs, node):
            before = prev.ring if prev is not None and not lived.joined else None
            by_ring.setdefault(lived.ring, []).append((lived, before, recs[lived.at].t))
            prev = lived
    lost: set[bytes] = set()
    for epochs in by_ring.values():
        for s, s_prev, s_installed in epochs:
            if s.node not in corosync_nodes or s.joined or s_prev is None:
                continue
            stream = [p for p in s.delivered if sender_of.get(p) == s.node]
            backlog = 0
            while backlog < len(stream) and sent_at.get(stream[backlog], s_installed) < s_installed:
                backlog += 1
            if backlog == 0:
                continue
            came_with = [e for e, e_prev, _t in epochs if e_prev == s_prev]
            for x, x_prev, _t in epochs:
                if x.node == s.node or (x_prev == s_prev and not x.joined):
                    continue
                got = {p for p in x.delivered if sender_of.get(p) == s.node}
                first = next((i for i, p in enumerate(stream) if p in got), None)
                if first is None or first == 0 or first > backlog:
                    continue
                run = stream[:first]
                if x.joined:
                    # What S's epoch delivered before X's first delivery was before X's join point
                    # (join_epoch_violations does not judge it): not lost, not counted.
                    pos = {p: i for i, p in enumerate(s.delivered)}
                    join_point = pos.get(x.delivered[0])
                    if join_point is None:
                        continue
                    run = [p for p in run if pos[p] > join_point]
                if run and all(set(run) <= set(e.delivered) for e in came_with):
                    lost.update(run)
    return lost


def _without(histories: dict[NodeId, list[Record]], gone: set[bytes]) -> dict[NodeId, list[Record]]:
    """The histories with every send and delivery of the `gone` messages removed."""
    return {
        node: [r for r in recs if not (isinstance(r, Sent | Delivered) and r.payload in gone)]
        for node, recs in histories.items()
    }


def judge(
    histories: dict[NodeId, list[Record]],
    liveness: LivenessSpec | None,
    excused: set[bytes] | frozenset[bytes] = frozenset(),
    ring_seq_resets: dict[NodeId, int] | None = None,
) -> tuple[list[Violation], int]:
    """Run the simulator's checker; return (violations judged, violations set aside as unobservable).

    `excused`: messages not judged at all (their sends and deliveries are removed first): those
    corosync's own receive rule loses at some members (`corosync_continuation_losses`).
    `ring_seq_resets`: node → how many times its corosync restarted with an unreadable ringid file
    (`Chaos.start`); that many ring-monotonic reports of the node are set aside.
    """
    if excused:
        histories = _without(histories, set(excused))
    # The checker keeps only the first few violations per property; we must see them all to set
    # the unobservable ones aside, so lift its report cap for this call.
    relabelled, epochs = private_join_epochs(histories)
    cap = invariants.MAX_REPORTS_PER_PROPERTY
    invariants.MAX_REPORTS_PER_PROPERTY = 1 << 30
    try:
        found = check(relabelled, settled=True, liveness=liveness)
        live = check(histories, settled=True, liveness=liveness) if liveness is not None else []
    finally:
        invariants.MAX_REPORTS_PER_PROPERTY = cap
    split = split_rings(relabelled)
    resets = dict(ring_seq_resets or {})
    reset_aside = 0
    for v in list(found):
        if v.prop == "ring-monotonic" and v.node is not None and resets.get(v.node, 0) > 0:
            resets[v.node] -= 1
            found.remove(v)
            reset_aside += 1
    kept = [
        v
        for v in found
        if v.prop not in UNJUDGED
        and not (v.prop == "agreed" and v.config in split)
        and v.prop != "liveness"
    ]
    # Liveness is judged on the original ring ids (a client that joined in the final ring ends
    # in that ring, not in a private one); only final-delivery gaps explained by a late join are
    # set aside.
    kept += [
        v
        for v in live
        if v.prop == "liveness"
        and not (
            v.node is not None
            and v.detail.split(") ", 1)[-1].startswith("never delivered")
            and late_join_excuses(histories, v.node)
        )
    ]
    judged = len([v for v in found if v.prop != "liveness"]) + len([v for v in live if v.prop == "liveness"])
    set_aside = judged - len(kept) + reset_aside
    return kept + join_epoch_violations(histories, epochs), set_aside


# -- the fault schedule --------------------------------------------------------------------------
@dataclass
class Faults:
    """What is currently broken, so every fault is undone exactly once."""

    dead: set[int] = field(default_factory=set)
    partitioned: set[int] = field(default_factory=set)
    lossy: set[int] = field(default_factory=set)
    cut: set[tuple[int, int]] = field(default_factory=set)  # (node, link) without carrier
    log: list[str] = field(default_factory=list)

    def count(self) -> int:
        return len(self.dead) + (1 if self.partitioned else 0) + len(self.lossy) + len(self.cut)


class Chaos:
    def __init__(self, cluster: BenchCluster, rng: random.Random, max_faults: int, links: int) -> None:
        self.c = cluster
        self.rng = rng
        self.max_faults = max_faults
        self.links = links
        self.f = Faults()
        self.t0 = time.monotonic()
        self.ringid_lost: list[int] = []  # corosync nodes restarted with an unreadable ringid file

    def start(self, n: int) -> None:
        """Start node n's daemon; first note a corosync ringid file a kill -9 left unreadable.

        corosync (exec/main.c, corosync_ring_id_store) rewrites state_dir/ringid_<nodeid> at every
        COMMIT with creat() and then write(): a kill -9 between the two leaves it empty, and the
        next start reads no seq and begins again from 0 (its first ring is then seq 5), behind
        the rings it installed before — a real corosync's own lapse, not the harness's (the state
        dir is kept across restarts). Recorded so the ring-monotonic report of that restart is set
        aside (`judge`'s `ring_seq_resets`), and only then.
        """
        if self.c.system_of(n).daemon == "corosync":
            path = self.c.workdir / f"state{n}" / f"ringid_{n}"
            size = path.stat().st_size if path.exists() else RINGID_BYTES  # absent: never started
            if size != RINGID_BYTES:
                self.ringid_lost.append(n)
                self.note(f"node {n}: corosync's ringid file holds {size} bytes: its ring seq restarts")
        self.c.start(n)

    def note(self, text: str) -> None:
        line = f"{time.monotonic() - self.t0:7.2f}s {text}"
        self.f.log.append(line)
        print("  " + line, flush=True)

    def step(self) -> None:
        """Break or repair one thing at random."""
        nodes = self.c.nodes
        choices = ["heal"]
        if self.f.count() < self.max_faults:
            alive = [n for n in nodes if n not in self.f.dead]
            if len(alive) > 1:
                choices += ["kill", "kill", "stop", "partition", "loss", "carrier"]
        if self.f.dead:
            choices += ["restart", "restart"]
        what = self.rng.choice(choices)
        getattr(self, f"_{what}")()

    def _alive_pick(self) -> int:
        return self.rng.choice([n for n in self.c.nodes if n not in self.f.dead])

    def _kill(self) -> None:
        n = self._alive_pick()
        self.c.kill(n)
        self.f.dead.add(n)
        self.note(f"kill -9 node {n}")

    def _stop(self) -> None:
        n = self._alive_pick()
        proc = self.c.daemons[n]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except Exception:  # a daemon that does not leave in time is killed
            systems.kill9(proc)
        self.f.dead.add(n)
        self.note(f"SIGTERM node {n} (clean leave)")

    def _restart(self) -> None:
        n = self.rng.choice(sorted(self.f.dead))
        self.start(n)
        self.f.dead.discard(n)
        self.note(f"restart node {n}")

    def _partition(self) -> None:
        nodes = list(self.c.nodes)
        self.rng.shuffle(nodes)
        cut = self.rng.randint(1, len(nodes) - 1)
        side_a, side_b = sorted(nodes[:cut]), sorted(nodes[cut:])
        for n in side_a:
            self.c.lab.partition(n, side_b)
            self.f.partitioned.add(n)
        self.note(f"partition {side_a} | {side_b}")

    def _loss(self) -> None:
        n = self.rng.choice(self.c.nodes)
        pct = self.rng.choice((5, 10, 20, 30))
        self.c.lab.loss(n, pct)
        self.f.lossy.add(n)
        self.note(f"{pct}% loss into node {n}")

    def _carrier(self) -> None:
        n = self.rng.choice(self.c.nodes)
        link = self.rng.randrange(self.links)
        self.c.lab.carrier(n, link, up=False)
        self.f.cut.add((n, link))
        self.note(f"carrier down node {n} link {link}")

    def _heal(self) -> None:
        options = (["net"] if self.f.partitioned or self.f.lossy else []) + (
            ["carrier"] if self.f.cut else []
        )
        if not options:
            return
        if self.rng.choice(options) == "carrier":
            n, link = self.rng.choice(sorted(self.f.cut))
            self.c.lab.carrier(n, link, up=True)
            self.f.cut.discard((n, link))
            self.note(f"carrier up node {n} link {link}")
            return
        # Partition and loss rules share one nftables table per node: heal them together.
        for n in sorted(self.f.partitioned | self.f.lossy):
            self.c.lab.heal(n)
        self.f.partitioned.clear()
        self.f.lossy.clear()
        self.note("partition and loss healed")

    def heal_all(self) -> None:
        for n, link in sorted(self.f.cut):
            self.c.lab.carrier(n, link, up=True)
        for n in self.c.nodes:
            self.c.lab.heal(n)
        for n in sorted(self.f.dead):
            self.start(n)
        self.f = Faults(log=self.f.log)
        self.note("everything healed, every daemon running")


# -- the run ------------------------------------------------------------------------------------------
def collect(cluster: BenchCluster, into: dict[int, list[list[Any]]]) -> None:
    for n, ans in cluster.call_all(cluster.nodes, {"op": "history"}, 30).items():
        if not ans.get("ok"):
            raise DriverError(f"node {n}: history: {ans}")
        if ans.get("overflow"):
            raise DriverError(f"node {n}: history overflowed; drain more often")
        into.setdefault(n, []).extend(ans["records"])


def wait_full_ring(cluster: BenchCluster, raw: dict[int, list[list[Any]]], timeout_s: float) -> float:
    """Seconds until every client's latest configuration is the full ring (same ring everywhere)."""
    t0 = time.monotonic()
    want = sorted(cluster.nodes)
    while time.monotonic() - t0 < timeout_s:
        collect(cluster, raw)
        last = {}
        for n in cluster.nodes:
            configs = [r for r in raw.get(n, []) if r[0] in ("config", "boot", "crash")]
            last[n] = configs[-1] if configs else None
        if all(r is not None and r[0] == "config" and sorted(r[4]) == want for r in last.values()):
            if len({(r[2], r[3]) for r in last.values() if r is not None}) == 1:
                return time.monotonic() - t0
        time.sleep(0.2)
    raise DriverError(f"no client saw the full ring within {timeout_s} s")


def diagnose(c: BenchCluster, raw: dict[int, list[list[Any]]]) -> None:
    """Print what each node's daemon and client were doing (for a ring that did not form)."""
    for n in c.nodes:
        last = [r for r in raw.get(n, []) if r[0] in ("config", "boot", "crash")][-1:]
        print(f"  node {n}: daemon {'up' if c.alive(n) else 'DOWN'}, last client record {last}")
    print(c.describe(), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, required=True, help="seconds of faults")
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--transport", choices=("udpu", "knet"), default="udpu")
    ap.add_argument("--token", type=int, default=300)
    ap.add_argument("--rate", type=float, default=50.0, help="messages/s per client")
    ap.add_argument("--size", type=int, default=64, help="bytes per message")
    ap.add_argument("--max-faults", type=int, default=2)
    ap.add_argument("--step", type=float, default=1.5, help="mean seconds between fault events")
    ap.add_argument("--keep-workdir", action="store_true")
    ap.add_argument("--save", type=Path, default=None, help="write the raw histories (JSON) here")
    ap.add_argument("--recheck", type=Path, default=None, help="judge a saved run again; start nothing")
    ap.add_argument("--all", action="store_true", help="print every violation, not only the first")
    ap.add_argument("--mixed", action="store_true", help="corosync on some nodes, cmanlkd on the rest")
    ap.add_argument(
        "--corosync-nodes",
        default=None,
        help="with --mixed: node ids running corosync (1,2); naming every node runs corosync alone",
    )
    args = ap.parse_args(argv)
    if args.recheck is not None:
        saved = json.loads(args.recheck.read_text())
        return report(saved, args.all)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    system = systems.CMANLK_NATIVE if args.transport == "knet" else systems.CMANLK_UDPU
    nodes = list(range(1, args.nodes + 1))
    per_node: dict[int, systems.System] = {}
    if args.mixed:
        if args.transport != "udpu":
            ap.error("--mixed runs over udpu (corosync's knet is not cmanlkd's native transport)")
        if shutil.which("corosync") is None:
            print("chaos: --mixed needs Debian's corosync (scripts/setup.sh installs it)", flush=True)
            return 2
        picked = args.corosync_nodes or ",".join(str(n) for n in nodes[: max(1, len(nodes) // 2)])
        cs_nodes = sorted({int(x) for x in picked.split(",") if x})
        if not cs_nodes or not set(cs_nodes) <= set(nodes):
            # Every node may run corosync: the reference run, a corosync-only ring judged by the
            # same checker (what corosync itself does under the same faults).
            ap.error("--corosync-nodes must name nodes of the run")
        per_node = {n: systems.COROSYNC_UDPU for n in cs_nodes}
    token_eff = args.token + max(0, len(nodes) - 2) * 650
    bound_s = 4 * token_eff / 1000 + 20  # token + consensus per round, a few rounds, start-up
    workdir = Path(tempfile.mkdtemp(prefix="cmkchaos-"))
    started = time.monotonic()
    mix = f" corosync on {sorted(per_node)}" if per_node else ""
    print(
        f"chaos: seed={seed} nodes={len(nodes)} transport={system.transport}{mix} token={args.token} ms "
        f"duration={args.duration} s",
        flush=True,
    )
    raw: dict[int, list[list[Any]]] = {}
    try:
        with Lab(links=system.links) as lab:
            c = BenchCluster(lab, system, nodes, workdir, args.token, per_node=per_node)
            for n in nodes:
                c.start(n)
            for n in nodes:
                c.start_driver(n)
                c.drivers[n].call({"op": "soak", "node": n, "rate": args.rate, "size": args.size})
            chaos = Chaos(c, rng, args.max_faults, system.links)
            try:
                wait_full_ring(c, raw, bound_s + 30)
            except DriverError:
                diagnose(c, raw)
                raise
            chaos.note("ring of all nodes formed; faults start")
            end = time.monotonic() + args.duration
            last_drain = time.monotonic()
            while time.monotonic() < end:
                time.sleep(min(rng.expovariate(1 / args.step), max(0.0, end - time.monotonic())))
                if time.monotonic() >= end:
                    break
                chaos.step()
                if time.monotonic() - last_drain > HISTORY_DRAIN_S:
                    collect(c, raw)
                    last_drain = time.monotonic()
            chaos.heal_all()
            quiet_from = time.monotonic_ns()
            try:
                took = wait_full_ring(c, raw, bound_s)
                chaos.note(f"full ring again after {took:.2f} s")
            except DriverError as exc:
                # Not fatal to the run: the liveness check reports it, with the histories.
                chaos.note(f"NOT re-formed: {exc}")
                diagnose(c, raw)
            time.sleep(SETTLE_TRAFFIC_S)
            traffic_until = time.monotonic_ns()
            for n in nodes:
                c.drivers[n].call({"op": "soak", "node": n, "rate": 0})
            time.sleep(DRAIN_S)
            collect(c, raw)
    except (DriverError, OSError) as exc:
        print(f"chaos run failed: {type(exc).__name__}: {exc}", flush=True)
        print(f"seed={seed}")
        return 2
    finally:
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    saved = {
        "seed": seed,
        "nodes": nodes,
        "transport": system.transport,
        "corosync_nodes": sorted(per_node),
        "token_ms": args.token,
        "faults": chaos.f.log,
        "ringid_lost": chaos.ringid_lost,
        "duration_s": args.duration,
        "wall_s": round(time.monotonic() - started, 1),
        "quiet_from": quiet_from,
        "bound_ns": int(bound_s * 1e9),
        "traffic_until": traffic_until,
        "records": {str(n): recs for n, recs in raw.items()},
    }
    if args.save is not None:
        args.save.write_text(json.dumps(saved) + "\n")
    return report(saved, args.all)


FAULT_KINDS = (
    ("kill -9", "kill"),
    ("SIGTERM", "stop"),
    ("restart", "restart"),
    ("partition and loss healed", "net-heal"),
    ("partition", "partition"),
    ("loss into", "loss"),
    ("carrier down", "carrier-down"),
    ("carrier up", "carrier-up"),
)


def fault_kinds(log: list[str]) -> dict[str, int]:
    """Count the fault log's events by kind (the run's own notes are not counted)."""
    counts = {name: 0 for _text, name in FAULT_KINDS}
    for line in log:
        for text, name in FAULT_KINDS:
            if text in line:
                counts[name] += 1
                break
    return counts


def report(saved: dict[str, Any], show_all: bool) -> int:
    """Judge a run (live or saved); print the verdict; return the exit status."""
    histories = {NodeId(int(n)): to_history(recs) for n, recs in saved["records"].items()}
    spec = LivenessSpec(
        Instant(saved["quiet_from"]), Duration(saved["bound_ns"]), Instant(saved["traffic_until"])
    )
    lost = corosync_continuation_losses(
        histories, frozenset(NodeId(int(n)) for n in saved.get("corosync_nodes", ()))
    )
    resets: dict[NodeId, int] = {}
    for n in saved.get("ringid_lost", ()):
        resets[NodeId(int(n))] = resets.get(NodeId(int(n)), 0) + 1
    violations, set_aside = judge(histories, spec, lost, resets)
    sent = sum(1 for h in histories.values() for r in h if isinstance(r, Sent))
    delivered = sum(1 for h in histories.values() for r in h if isinstance(r, Delivered))
    configs = sum(
        1 for h in histories.values() for r in h if isinstance(r, Installed) and r.kind is ConfigKind.REGULAR
    )
    kinds = fault_kinds(saved["faults"])
    mixed = f" corosync_nodes={saved['corosync_nodes']}" if saved.get("corosync_nodes") else ""
    print(
        f"seed={saved['seed']} transport={saved.get('transport', '?')} nodes={len(saved.get('nodes', ()))}"
        f"{mixed} duration={saved.get('duration_s', '?')} s wall={saved.get('wall_s', '?')} s"
    )
    print(f"fault_events={sum(kinds.values())} ({', '.join(f'{k}: {n}' for k, n in kinds.items())})")
    splits = view_splits(histories)
    print(
        f"sent={sent} delivered={delivered} configurations={configs} unjudged={set_aside} "
        f"view_splits={len(splits)} corosync_continuation_losses={len(lost)}"
    )
    if violations:
        by_prop: dict[str, int] = {}
        for v in violations:
            by_prop[v.prop] = by_prop.get(v.prop, 0) + 1
        print(
            f"violations={len(violations)} ({', '.join(f'{p}: {n}' for p, n in sorted(by_prop.items()))});"
            f" {'the first of each property' if show_all else 'the first'}:"
        )
        firsts = [next(v for v in violations if v.prop == p) for p in by_prop] if show_all else violations[:1]
        print("\n".join(str(v) for v in firsts))
        return 1
    print("violations=0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
