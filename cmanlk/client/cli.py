"""cmanlk-tool: the admin command line of cmanlkd, in the spirit of cman_tool and corosync-quorumtool.

    cmanlk-tool [-s SOCKET] [--json] COMMAND [ARGS]

Read commands (each takes --json; the schema is docs/cli-json.md): status, nodes, quorum, links,
groups, dlm, version. Changes (root): expected N, votes N [-n NODEID], leave, kill NODEID,
fence-ack NODEID. Live events: monitor [--count N] (--json: one JSON object per line).
The cmap key tree and the cluster-wide reload go over libqb, as corosync's tools
(cmanlk.client.cmapcli): cmap get|list|set|delete|track, reload.

Exit codes: 0 success; 1 error (daemon unreachable, request refused — the message names the
daemon's error code); 2 when this node is not quorate (`quorum`, `status`), the code
corosync-quorumtool -s exits with, so scripts written for it test quorum the same way; 64 usage
(EX_USAGE of sysexits.h: 2 is taken by "not quorate").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from cmanlk import __version__
from cmanlk.client import Client, ClientError, cmapcli
from cmanlk.client import proto as ipcproto

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NOT_QUORATE = 2
"""corosync-quorumtool's EXIT_NOT_QUORATE (tools/corosync-quorumtool.c)."""
EXIT_USAGE = 64

JSON_SCHEMA_VERSION = 1
"""Bumped only on an incompatible change of docs/cli-json.md (fields are only ever added)."""

_FLAG_NAMES = (
    ("two_node", "2Node"),
    ("wait_for_all", "WaitForAll"),
    ("last_man_standing", "LastManStanding"),
    ("auto_tie_breaker", "AutoTieBreaker"),
    ("allow_downscale", "AllowDownscale"),
)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run one command; return its exit code (see the module docstring)."""
    stdout = out or sys.stdout
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help exits 0, a usage error 2 (ours is EXIT_USAGE)
        return EXIT_OK if exc.code in (0, None) else EXIT_USAGE
    if args.command is None:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    command: Callable[[argparse.Namespace, TextIO], int] = args.run
    try:
        return command(args, stdout)
    except ClientError as exc:
        print(f"cmanlk-tool: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmanlk-tool", description="Query and control cmanlkd.")
    parser.add_argument("-s", "--socket", default=ipcproto.DEFAULT_SOCKET_PATH, help="daemon socket path")
    parser.add_argument("--json", action="store_true", help="machine-readable output (docs/cli-json.md)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, run, text in (
        ("status", _cmd_status, "quorum and membership summary (exit 2 when not quorate)"),
        ("nodes", _cmd_nodes, "nodes, their votes and state"),
        ("quorum", _cmd_quorum, "votequorum state; exit 0 quorate, 2 not (corosync-quorumtool -s)"),
        ("links", _cmd_links, "each link: address, peers, counters (corosync-cfgtool -s)"),
        ("groups", _cmd_groups, "closed process groups and their members"),
        ("dlm", _cmd_dlm, "DLM lockspaces"),
        ("version", _cmd_version, "versions of this tool and of the daemon"),
        ("leave", _cmd_leave, "this node leaves the cluster (root)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.set_defaults(run=run)
    p = sub.add_parser("expected", help="set expected votes (root)")
    p.add_argument("votes", type=int)
    p.set_defaults(run=_cmd_expected)
    p = sub.add_parser("votes", help="set votes of a node, default this one (root)")
    p.add_argument("votes", type=int)
    p.add_argument("-n", "--nodeid", type=int, default=0)
    p.set_defaults(run=_cmd_votes)
    p = sub.add_parser("kill", help="make a member leave the cluster; its daemon exits (root)")
    p.add_argument("nodeid", type=int)
    p.add_argument("-r", "--reason", help="what the killed node logs (at most 255 bytes)")
    p.set_defaults(run=_cmd_kill)
    p = sub.add_parser("fence-ack", help="confirm a node is fenced so DLM recovery goes on (root)")
    p.add_argument("nodeid", type=int)
    p.set_defaults(run=_cmd_fence_ack)
    cmapcli.add_commands(sub)
    p = sub.add_parser("monitor", help="print membership and quorum changes as they happen")
    p.add_argument("--count", type=int, default=0, help="exit after this many events (0: never)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.set_defaults(run=_cmd_monitor)
    return parser


def _connect(args: argparse.Namespace) -> Client:
    return Client.connect(args.socket)


def _emit_json(out: TextIO, command: str, body: dict[str, Any]) -> None:
    out.write(json.dumps({"schema": JSON_SCHEMA_VERSION, "command": command, **body}, sort_keys=True) + "\n")


# --- read commands ------------------------------------------------------------------------------------


def _quorum_body(q: dict[str, Any]) -> dict[str, Any]:
    return {
        "quorate": bool(q.get("quorate", False)),
        "expected_votes": int(q.get("expected_votes", 0) or 0),
        "highest_expected": int(q.get("highest_expected", q.get("expected_votes", 0)) or 0),
        "total_votes": int(q.get("total_votes", 0) or 0),
        "quorum": int(q.get("quorum", 0) or 0),
        "flags": [name for key, name in _FLAG_NAMES if q.get(key)],
        "wait_for_all_status": bool(q.get("wait_for_all_status", False)),
    }


def _node_rows(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "nodeid": int(n.get("nodeid", 0)),
            "name": str(n.get("name", "")),
            "votes": int(n.get("votes", 0) or 0),
            "state": str(n.get("state", "")),
            "local": bool(n.get("local", False)),
            "addresses": [str(a) for a in n.get("addresses", [])],
        }
        for n in nodes
    ]


def _cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    with _connect(args) as c:
        status, quorum, nodes = c.status(), _quorum_body(c.quorum()), _node_rows(c.nodes())
    members = [n for n in nodes if n["state"] == "member"]
    code = EXIT_OK if quorum["quorate"] else EXIT_NOT_QUORATE
    if args.json:
        body = {
            "node_id": status.get("node_id"),
            "cluster_name": status.get("cluster_name", ""),
            "ring_id": status.get("ring_id", ""),
            "state": status.get("state", ""),
            "members": [n["nodeid"] for n in members],
            "quorum": quorum,
            "nodes": nodes,
        }
        _emit_json(out, "status", body)
        return code
    _section(out, "Quorum information")
    _kv(out, "Date", time.strftime("%a %b %d %H:%M:%S %Y"))
    _kv(out, "Cluster name", status.get("cluster_name", ""))
    _kv(out, "Node ID", status.get("node_id", ""))
    _kv(out, "Ring ID", status.get("ring_id", ""))
    _kv(out, "Totem state", status.get("state", ""))
    _kv(out, "Quorate", "Yes" if quorum["quorate"] else "No")
    out.write("\n")
    _votequorum_block(out, quorum)
    out.write("\n")
    _membership_table(out, members)
    return code


def _cmd_quorum(args: argparse.Namespace, out: TextIO) -> int:
    with _connect(args) as c:
        raw = c.quorum()
    quorum = _quorum_body(raw)
    code = EXIT_OK if quorum["quorate"] else EXIT_NOT_QUORATE
    if args.json:
        where = {"node_id": raw.get("node_id"), "ring_id": raw.get("ring_id", "")}
        _emit_json(out, "quorum", {**quorum, **where})
        return code
    _kv(out, "Quorate", "Yes" if quorum["quorate"] else "No")
    _votequorum_block(out, quorum, header=False)
    return code


def _cmd_nodes(args: argparse.Namespace, out: TextIO) -> int:
    with _connect(args) as c:
        nodes = _node_rows(c.nodes())
    if args.json:
        _emit_json(out, "nodes", {"nodes": nodes})
        return EXIT_OK
    _table(out, _NODE_COLUMNS, [(n["nodeid"], n["votes"], n["state"], _node_name(n)) for n in nodes])
    return EXIT_OK


def _cmd_links(args: argparse.Namespace, out: TextIO) -> int:
    with _connect(args) as c:
        result = c.call("links")
    rows = [
        {"nodeid": int(lk.get("nodeid", 0)), "link": int(lk.get("link", 0)), "up": bool(lk.get("up", False)),
         "address": str(lk.get("address", ""))}
        for lk in result.get("links", [])
        if isinstance(lk, dict)
    ]
    local = [lk for lk in result.get("local", []) if isinstance(lk, dict)]
    if args.json:
        _emit_json(out, "links", {"links": rows, "local": local, "node_id": result.get("node_id")})
        return EXIT_OK
    _write_links_text(out, result.get("node_id"), local)
    return EXIT_OK


def _write_links_text(out: TextIO, me: object, local: list[dict[str, Any]]) -> None:
    """corosync-cfgtool -s's layout, with each peer's address and the link's counters."""
    out.write(f"Local node ID {me}\n")
    for lk in local:
        device = f" ({lk['interface']})" if lk.get("interface") else ""
        out.write(f"LINK ID {lk.get('index', 0)}\n")
        out.write(f"\taddr\t= {lk.get('local_address') or '-'}{device}\n")
        state = "up" if lk.get("up") else f"DOWN ({lk.get('reason') or 'not bound'})"
        out.write(f"\tstate\t= {state}\n\tstatus:\n")
        out.write(f"\t\tnodeid: {me!s:>10}:\tlocalhost\n")
        for peer in lk.get("peers", []):
            if not isinstance(peer, dict):
                continue
            how = "connected" if peer.get("reachable") else "disconnected"
            why = f": {peer['reason']}" if peer.get("reason") and not peer.get("reachable") else ""
            out.write(f"\t\tnodeid: {peer.get('node')!s:>10}:\t{how} ({peer.get('address', '?')}{why})\n")
        counters = lk.get("counters") if isinstance(lk.get("counters"), dict) else {}
        if counters:
            out.write("\tcounters: " + ", ".join(f"{k} {v}" for k, v in sorted(counters.items())) + "\n")


def _cmd_groups(args: argparse.Namespace, out: TextIO) -> int:
    with _connect(args) as c:
        groups = c.groups()
    rows: list[dict[str, Any]] = [
        {"name": str(g.get("name")), "members": [{"nodeid": n, "pid": p} for n, p in g.get("members", ())]}
        for g in groups
    ]
    if args.json:
        _emit_json(out, "groups", {"groups": rows})
        return EXIT_OK
    _table(out, _GROUP_COLUMNS, [(g["name"], len(g["members"]), _processes(g["members"])) for g in rows])
    return EXIT_OK


def _cmd_dlm(args: argparse.Namespace, out: TextIO) -> int:
    with _connect(args) as c:
        result = c.dlm()
    lockspaces: list[dict[str, Any]] = [
        {**ls, "name": str(ls.get("name", "")), "state": str(ls.get("state", "")),
         "stopped": ls.get("state") != "started"}
        for ls in result.get("lockspaces", [])
        if isinstance(ls, dict)
    ]
    raw_fencing = result.get("fencing")
    fencing: dict[str, Any] = raw_fencing if isinstance(raw_fencing, dict) else {}
    victims = [v for v in fencing.get("victims", []) if isinstance(v, dict)]
    if args.json:
        body = {"cluster": result.get("cluster", {}), "lockspaces": lockspaces,
                "fencing": {**fencing, "victims": victims, "waiting": _dlm_unfenced(victims)},
                "daemon": result.get("daemon", {})}
        _emit_json(out, "dlm", body)
        return EXIT_OK
    _write_dlm_text(out, result.get("cluster", {}), lockspaces, fencing, victims)
    return EXIT_OK


def _dlm_unfenced(victims: list[dict[str, Any]]) -> list[int]:
    """Node ids whose fencing recovery still waits for (not yet fenced or acknowledged)."""
    return [int(v["nodeid"]) for v in victims if v.get("state") != "fenced" and "nodeid" in v]


def _write_dlm_text(out: TextIO, cluster: Any, lockspaces: list[dict[str, Any]], fencing: dict[str, Any],
                    victims: list[dict[str, Any]]) -> None:
    if isinstance(cluster, dict) and cluster:
        members = " ".join(str(n) for n in cluster.get("members", []))
        state = "configured" if cluster.get("configured") else "not configured"
        out.write(f"Kernel DLM cluster: {state}, members [{members}]\n")
    out.write(f"{'Lockspace':<24} {'State':<8} {'Members':<16} Waiting for\n")
    for ls in lockspaces:
        members = " ".join(str(n) for n in ls.get("members", []))
        waiting = ", ".join(str(w) for w in ls.get("waiting_for", [])) or "-"
        out.write(f"{ls['name']:<24} {ls['state']:<8} {members:<16} {waiting}\n")
    if not fencing:
        return
    role = ", this node is the fencer" if fencing.get("fencer") else ""
    out.write(f"Fencing: {'enabled' if fencing.get('enabled') else 'disabled'}{role}\n")
    if victims:
        out.write(f"{'Node':<6} {'State':<8} {'Since':>8} {'Attempts':>8}  Last agent result\n")
    for v in victims:
        since = f"{int(v.get('for_ns', 0)) / 1e9:.1f}s" if "for_ns" in v else "-"
        agent = v.get("agent")
        if isinstance(agent, dict):
            tail = str(agent.get("output_tail", "")).strip().splitlines()
            last = f"exit {agent.get('exit_code')}" + (f": {tail[-1][:60]}" if tail else "")
        else:
            last = "no device: waiting for fence-ack" if v.get("has_device") is False else "-"
        how = f" ({v['how']})" if v.get("how") else ""
        out.write(f"{v.get('nodeid', '?')!s:<6} {str(v.get('state', '')) + how:<8} {since:>8} "
                  f"{v.get('attempts', 0)!s:>8}  {last}\n")


def _cmd_version(args: argparse.Namespace, out: TextIO) -> int:
    daemon: dict[str, Any] = {}
    try:
        with _connect(args) as c:
            daemon = dict(c.server)
    except ClientError as exc:
        daemon = {"error": exc.code}
    body = {
        "tool_version": __version__,
        "protocol_versions": list(ipcproto.SUPPORTED_VERSIONS),
        "daemon_version": daemon.get("server_version", ""),
        "daemon_protocol": daemon.get("version", 0),
        "daemon_error": daemon.get("error", ""),
    }
    if args.json:
        _emit_json(out, "version", body)
    else:
        out.write(f"cmanlk-tool {__version__} (IPC protocol {ipcproto.PROTOCOL_VERSION})\n")
        if body["daemon_error"]:
            out.write(f"cmanlkd: not reachable at {args.socket} ({body['daemon_error']})\n")
        else:
            out.write(f"cmanlkd {body['daemon_version']} (IPC protocol {body['daemon_protocol']})\n")
    return EXIT_OK if not body["daemon_error"] else EXIT_ERROR


# --- changes ------------------------------------------------------------------------------------------


def _cmd_expected(args: argparse.Namespace, out: TextIO) -> int:
    with _connect(args) as c:
        c.set_expected(args.votes)
    out.write(f"expected votes set to {args.votes}\n")
    return EXIT_OK


def _cmd_votes(args: argparse.Namespace, out: TextIO) -> int:
    with _connect(args) as c:
        c.set_votes(args.votes, args.nodeid)
    who = f"node {args.nodeid}" if args.nodeid else "this node"
    out.write(f"votes of {who} set to {args.votes}\n")
    return EXIT_OK


def _cmd_leave(args: argparse.Namespace, out: TextIO) -> int:
    with _connect(args) as c:
        c.leave()
    out.write("leaving the cluster\n")
    return EXIT_OK


def _cmd_kill(args: argparse.Namespace, out: TextIO) -> int:
    with _connect(args) as c:
        request: dict[str, Any] = {"nodeid": args.nodeid}
        if args.reason:
            request["reason"] = args.reason
        result = c.call("kill", request)
    if result.get("result") == "leaving":
        out.write(f"node {args.nodeid} is this node: leaving the cluster\n")
    else:
        out.write(f"node {args.nodeid}: kill request sent; it leaves the cluster and its daemon exits\n")
    return EXIT_OK


def _cmd_fence_ack(args: argparse.Namespace, out: TextIO) -> int:
    with _connect(args) as c:
        c.fence_ack(args.nodeid)
    out.write(f"fencing of node {args.nodeid} acknowledged\n")
    return EXIT_OK


# --- monitor ------------------------------------------------------------------------------------------


def _cmd_monitor(args: argparse.Namespace, out: TextIO) -> int:
    seen = 0
    with _connect(args) as c:
        for event in c.track(quorum=True):
            if args.json:
                _emit_json(out, "monitor", {"event": event.name, "data": event.data, "time": time.time()})
            else:
                out.write(_describe(event.name, event.data) + "\n")
            out.flush()
            seen += 1
            if args.count and seen >= args.count:
                break
    return EXIT_OK


def _describe(name: str, data: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S")
    if name == ipcproto.EV_TRACK:
        members = " ".join(str(m.get("nodeid")) for m in data.get("members", []))
        changes = " ".join(f"{m.get('change')}:{m.get('nodeid')}" for m in data.get("changes", []))
        what = "current membership" if data.get("current") else "membership changed"
        return f"{stamp} {what} ring {data.get('ring_id', '')}: members {members}" + (
            f" ({changes})" if changes else ""
        )
    if name == ipcproto.EV_QUORUM:
        state = "quorate" if data.get("quorate") else "NOT quorate"
        return f"{stamp} quorum: {state} (total votes {data.get('total_votes')}, quorum {data.get('quorum')})"
    if name == ipcproto.EV_FLOW:
        return f"{stamp} flow control: {data.get('state')}"
    return f"{stamp} {name}: {json.dumps(data, sort_keys=True)}"


# --- human output helpers -----------------------------------------------------------------------------


def _section(out: TextIO, title: str) -> None:
    out.write(f"{title}\n{'-' * len(title)}\n")


def _kv(out: TextIO, key: str, value: object) -> None:
    out.write(f"{key + ':':<18}{value}\n")


def _votequorum_block(out: TextIO, q: dict[str, Any], header: bool = True) -> None:
    if header:
        _section(out, "Votequorum information")
    _kv(out, "Expected votes", q["expected_votes"])
    _kv(out, "Highest expected", q["highest_expected"])
    _kv(out, "Total votes", q["total_votes"])
    _kv(out, "Quorum", q["quorum"] if q["quorate"] else f"{q['quorum']} Activity blocked")
    flags = (["Quorate"] if q["quorate"] else []) + list(q["flags"])
    _kv(out, "Flags", " ".join(flags))


def _membership_table(out: TextIO, members: list[dict[str, Any]]) -> None:
    _section(out, "Membership information")
    _table(out, _MEMBER_COLUMNS, [(n["nodeid"], n["votes"], _node_name(n)) for n in members])


Column = tuple[str, str, str]
"""A table column: (title, format spec of its cells, the gap written after it)."""

_NODE_COLUMNS: tuple[Column, ...] = (
    ("Nodeid", ">10", " "),
    ("Votes", ">6", "  "),
    ("State", "<8", " "),
    ("Name", "", ""),
)
_MEMBER_COLUMNS: tuple[Column, ...] = (("Nodeid", ">10", " "), ("Votes", ">10", " "), ("Name", "", ""))
_GROUP_COLUMNS: tuple[Column, ...] = (
    ("Group", "<32", " "),
    ("Members", ">7", "  "),
    ("Processes (nodeid:pid)", "", ""),
)


def _table(out: TextIO, columns: Sequence[Column], rows: Sequence[Sequence[object]]) -> None:
    """Write the title line of `columns`, then one line per row (cells formatted by the columns)."""
    for cells in [tuple(title for title, _, _ in columns), *rows]:
        out.write("".join(f"{cell:{spec}}{gap}" for cell, (_, spec, gap) in zip(cells, columns, strict=True)))
        out.write("\n")


def _node_name(node: dict[str, Any]) -> str:
    return str(node["name"]) + (" (local)" if node["local"] else "")


def _processes(members: list[dict[str, Any]]) -> str:
    return " ".join(f"{m['nodeid']}:{m['pid']}" for m in members)


if __name__ == "__main__":
    sys.exit(main())
