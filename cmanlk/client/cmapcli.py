"""`cmanlk-tool cmap …` and `cmanlk-tool reload`: corosync-cmapctl's and corosync-cfgtool -R's jobs.

Both go through libqb to the cmap and cfg services (cmanlk.client.corosync), the path corosync's
own tools take, so they show and change the same key tree and work against cmanlkd or corosync:

    cmanlk-tool cmap get KEY...               values (corosync-cmapctl -g)
    cmanlk-tool cmap list [PREFIX] [--stats]  every key under PREFIX (corosync-cmapctl [-m stats] PREFIX)
    cmanlk-tool cmap set KEY TYPE VALUE       TYPE: i8 u8 i16 u16 i32 u32 i64 u64 flt dbl str bin (hex)
    cmanlk-tool cmap delete KEY
    cmanlk-tool cmap track [PREFIX] [--exact] [--count N] [--timeout S]   changes as they happen (-t/-T)
    cmanlk-tool reload                        every node re-reads its configuration (corosync-cfgtool -R)

Lines are corosync-cmapctl's: `key (type) = value`, tracking `create> `, `modify> `, `delete> `.
With --json, one object (docs/cli-json.md); `track` prints one object per change.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from cmanlk.client.corosync import Cfg, Cmap, CmapChange, CmapError
from cmanlk.client.libqb import LibqbError
from cmanlk.services.cmap.store import TRACK_ADD, TRACK_DELETE, TRACK_MODIFY, TYPE_NAMES, Value, ValueType

EXIT_OK = 0
EXIT_ERROR = 1
JSON_SCHEMA_VERSION = 1
_TYPES = {name: kind for kind, name in TYPE_NAMES.items()}
TRACK_FOREVER_S = 3600.0
"""Without --timeout, `track` waits this long per poll and goes on (until --count or Ctrl-C)."""
_EVENT_WORDS = {TRACK_ADD: "create", TRACK_MODIFY: "modify", TRACK_DELETE: "delete"}


def add_commands(sub: Any) -> None:
    """Register `cmap` and `reload` on cmanlk-tool's subcommand parser."""
    p = sub.add_parser("cmap", help="read, change and watch the cmap key tree (as corosync-cmapctl)")
    actions = p.add_subparsers(dest="cmap_action", metavar="ACTION", required=True)
    g = actions.add_parser("get", help="print the values of keys")
    g.add_argument("keys", nargs="+")
    g.set_defaults(run=_cmd_get)
    lst = actions.add_parser("list", help="print every key under a prefix")
    lst.add_argument("prefix", nargs="?", default="")
    lst.add_argument("--stats", action="store_true", help="the stats map (corosync-cmapctl -m stats)")
    lst.set_defaults(run=_cmd_list)
    s = actions.add_parser("set", help="set a key (a key corosync keeps read-only is refused)")
    s.add_argument("key")
    s.add_argument("type", choices=sorted(_TYPES))
    s.add_argument("value")
    s.set_defaults(run=_cmd_set)
    d = actions.add_parser("delete", help="delete a key")
    d.add_argument("key")
    d.set_defaults(run=_cmd_delete)
    t = actions.add_parser("track", help="print changes under a prefix (or of one key) as they happen")
    t.add_argument("prefix", nargs="?", default="")
    t.add_argument("--exact", action="store_true", help="track the one key, not a prefix")
    t.add_argument("--count", type=int, default=0, help="exit after this many changes (0: never)")
    t.add_argument("--timeout", type=float, default=0.0, help="exit after this many seconds without one")
    t.set_defaults(run=_cmd_track)
    r = sub.add_parser("reload", help="every node re-reads its configuration (as corosync-cfgtool -R)")
    r.set_defaults(run=_cmd_reload)


def parse_value(kind: str, text: str) -> Value:
    """The Value `text` means for cmapctl type `kind`. Raises ValueError."""
    vtype = _TYPES[kind]
    if vtype is ValueType.STRING:
        return Value.of(vtype, text)
    if vtype is ValueType.BINARY:
        return Value(vtype, bytes.fromhex(text))
    if vtype in (ValueType.FLOAT, ValueType.DOUBLE):
        return Value.of(vtype, float(text))
    return Value.of(vtype, int(text, 0))


def render(key: str, value: Value) -> str:
    """corosync-cmapctl's line for a key."""
    python = value.python()
    if isinstance(python, bytes):
        shown = " ".join(f"{b:02x}" for b in python) or "*empty*"
    elif isinstance(python, float):
        shown = f"{python:f}"
    else:
        shown = str(python)
    return f"{key} ({TYPE_NAMES[value.type]}) = {shown}"


def _json_value(key: str, value: Value) -> dict[str, Any]:
    shown = value.python()
    return {
        "key": key,
        "type": TYPE_NAMES[value.type],
        "value": shown.hex() if isinstance(shown, bytes) else shown,
    }


def _emit(out: TextIO, command: str, body: dict[str, Any]) -> None:
    out.write(json.dumps({"schema": JSON_SCHEMA_VERSION, "command": command, **body}, sort_keys=True) + "\n")


def _guarded(run: Any) -> Any:
    def wrapper(args: argparse.Namespace, out: TextIO) -> int:
        try:
            return int(run(args, out))
        except (CmapError, LibqbError) as exc:
            print(f"cmanlk-tool: {exc}", file=sys.stderr)
            return EXIT_ERROR

    return wrapper


@_guarded
def _cmd_get(args: argparse.Namespace, out: TextIO) -> int:
    found: list[tuple[str, Value]] = []
    missing: list[str] = []
    with Cmap.connect() as cmap:
        for key in args.keys:
            value = cmap.get(key)
            if value is None:
                missing.append(key)
            else:
                found.append((key, value))
    if getattr(args, "json", False):
        _emit(out, "cmap get", {"keys": [_json_value(k, v) for k, v in found], "missing": missing})
    else:
        for key, value in found:
            out.write(render(key, value) + "\n")
        for key in missing:
            print(f"cmanlk-tool: {key}: CS_ERR_NOT_EXIST", file=sys.stderr)
    return EXIT_ERROR if missing else EXIT_OK


@_guarded
def _cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    with Cmap.connect(stats=args.stats) as cmap:
        items = cmap.items(args.prefix)
    if getattr(args, "json", False):
        _emit(out, "cmap list", {"prefix": args.prefix, "keys": [_json_value(k, v) for k, v in items]})
    else:
        for key, value in items:
            out.write(render(key, value) + "\n")
    return EXIT_OK


@_guarded
def _cmd_set(args: argparse.Namespace, out: TextIO) -> int:
    try:
        value = parse_value(args.type, args.value)
    except ValueError as exc:
        print(f"cmanlk-tool: {args.value!r} is no {args.type}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    with Cmap.connect() as cmap:
        cmap.set(args.key, value)
    if getattr(args, "json", False):
        _emit(out, "cmap set", _json_value(args.key, value))
    return EXIT_OK


@_guarded
def _cmd_delete(args: argparse.Namespace, out: TextIO) -> int:
    with Cmap.connect() as cmap:
        cmap.delete(args.key)
    if getattr(args, "json", False):
        _emit(out, "cmap delete", {"key": args.key})
    return EXIT_OK


@_guarded
def _cmd_track(args: argparse.Namespace, out: TextIO) -> int:
    """Print changes until --count of them, or --timeout seconds pass without one (or Ctrl-C)."""
    seen = 0
    as_json = getattr(args, "json", False)
    with Cmap.connect() as cmap:
        cmap.track(args.prefix, prefix=not args.exact)
        idle = args.timeout if args.timeout > 0 else TRACK_FOREVER_S
        while True:
            change = next(cmap.changes(idle), None)
            if change is None:
                if args.timeout > 0:
                    return EXIT_OK
                continue
            _print_change(out, change, as_json)
            seen += 1
            if args.count and seen >= args.count:
                return EXIT_OK


def _print_change(out: TextIO, change: CmapChange, as_json: bool) -> None:
    word = _EVENT_WORDS.get(change.event, "unknown change")
    shown = change.old if change.event == TRACK_DELETE else change.new
    if as_json:
        body: dict[str, Any] = {"event": word, "key": change.key}
        if shown is not None:
            body.update({k: v for k, v in _json_value(change.key, shown).items() if k != "key"})
        _emit(out, "cmap track", body)
    elif shown is not None:
        out.write(f"{word}> {render(change.key, shown)}\n")
    else:
        out.write(f"{word}> {change.key}\n")
    out.flush()


@_guarded
def _cmd_reload(args: argparse.Namespace, out: TextIO) -> int:
    with Cfg.connect() as cfg:
        cfg.reload()
    if getattr(args, "json", False):
        _emit(out, "reload", {"result": "reloaded"})
    else:
        out.write("Reloading the configuration on every node... Done\n")
    return EXIT_OK
