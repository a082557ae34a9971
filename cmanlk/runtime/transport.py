"""The Transport protocol: what the runtime needs from a way of moving totem frames between nodes.

Two implementations: `cmanlk.runtime.udpu.UdpuTransport` (corosync 3's udpu, wire-compatible, no
crypto) and `cmanlk.runtime.native.NativeTransport` (our multi-link encrypted transport, what
`transport: knet` selects). The runtime (`cmanlk.runtime.node`) only talks to this protocol, so a
transport is chosen once from the configuration (`build_transport(config, me)`) and nothing else
changes. NativeTransport reports per-(peer, link) paths; `_NativeAdapter` folds them into the
per-link `LinkStatus` of this protocol.

Contract shared by every transport (the shared layer is `cmanlk.runtime.datagrams`):
- `start(deliver)` binds what can be bound and then calls `deliver(data, src, link)` for each
  datagram that passed the transport's own filters, on the event loop thread, without creating
  a task per datagram — or, when `deliver` has a `batch` method, `deliver.batch(items)` once per
  wake-up with every datagram it drained (`datagrams.Inbox`). `src` is the node id the source
  address (or the authenticated sender) maps to, None when the transport cannot tell.
  Datagrams from unlisted sources are dropped and counted by the transport, not delivered.
- `unicast`/`multicast` never block and never raise for network errors (a send error is a lost
  datagram, which totem recovers from); they are silently ignored before `start` and after `close`.
  `multicast(to, data)` sends to each node in `to`; `to` never contains the local node.
- `links()` is a snapshot for status output; `set_nodes()` replaces the nodelist at run time
  (SIGHUP) and takes effect for the next datagram sent or received.
- `close()` is idempotent; it releases every socket and task.
- Optional: `set_ring_members(members)` — the node calls it with the members of every new ring
  it is in, for transports without probes of their own (udpu, udp): a ring member is reachable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cmanlk.config import ClusterConfig, NodeAddresses, TransportKind
from cmanlk.errors import ConfigError, ConfigProblem
from cmanlk.runtime.datagrams import Deliver, LinkStatus, PeerReachability
from cmanlk.runtime.udpmcast import UdpMcastTransport
from cmanlk.runtime.udpu import UdpuTransport
from cmanlk.types import NodeId

__all__ = ["Deliver", "LinkStatus", "PeerReachability", "Transport", "build_transport"]

@runtime_checkable
class Transport(Protocol):
    """A way of moving totem frames between the nodes of the nodelist (see the module docstring)."""

    async def start(self, deliver: Deliver) -> None:
        """Bind sockets and begin delivering datagrams. Raises OSError when nothing can be bound."""
        ...

    def unicast(self, to: NodeId, data: bytes) -> None:
        """Send one datagram to `to` (best effort)."""
        ...

    def multicast(self, to: tuple[NodeId, ...], data: bytes) -> None:
        """Send `data` to each node in `to` (best effort)."""
        ...

    def links(self) -> list[LinkStatus]:
        """Return the status of every configured local link."""
        ...

    def set_nodes(self, nodes: Mapping[NodeId, NodeAddresses]) -> None:
        """Replace the nodelist (node id → per-link addresses); used on SIGHUP."""
        ...

    async def close(self) -> None:
        """Release every socket and task; idempotent."""
        ...


def build_transport(config: ClusterConfig, me: NodeId) -> Transport:
    """Return the transport `config` selects, not yet started.

    Raises ConfigError when it cannot be built (missing key file, bad link set), OSError when our
    own address cannot be resolved.
    """
    if config.transport is TransportKind.UDPU:
        return UdpuTransport(
            me,
            config.node_addresses(),
            config.link(0),
            block_unlisted_ips=config.block_unlisted_ips,
            ip_version=config.ip_version,
        )
    if config.transport is TransportKind.UDP:
        return UdpMcastTransport(
            me,
            config.node_addresses(),
            config.link(0),
            cluster_name=config.totem.cluster_name,
            block_unlisted_ips=config.block_unlisted_ips,
            ip_version=config.ip_version,
        )
    if config.transport is TransportKind.NATIVE:
        return _native_transport(config, me)
    raise ConfigError([ConfigProblem(config.source, 0, "totem.transport", f"{config.transport} unsupported")])


# -- the native transport, adapted to the Transport protocol ---------------------------------------
class _NativeAdapter:
    """NativeTransport reports (peer, link) paths; this folds them into per-link LinkStatus."""

    def __init__(self, native: Any, config: ClusterConfig) -> None:
        self._native = native
        self._config = config

    async def start(self, deliver: Callable[[bytes, NodeId | None, int], None]) -> None:
        await self._native.start(deliver)

    def unicast(self, to: NodeId, data: bytes) -> None:
        self._native.unicast(to, data)

    def multicast(self, to: tuple[NodeId, ...], data: bytes) -> None:
        self._native.multicast(to, data)

    def set_nodes(self, nodes: Mapping[NodeId, Any]) -> None:
        self._native.set_nodes(nodes)

    async def close(self) -> None:
        await self._native.close()

    @property
    def max_payload_bytes(self) -> int:
        return int(self._native.max_payload_bytes)

    def links(self) -> list[LinkStatus]:
        paths = self._native.links()
        local = self._native.local_links()
        addrs = self._config.node_addresses()
        stats = self._native.stats
        out = []
        for lk in sorted(local):
            peers = tuple(
                PeerReachability(p.node, addrs.get(p.node, {}).get(lk, "?"), p.up, "" if p.up else p.reason)
                for p in paths
                if p.link == lk
            )
            text = local[lk]
            out.append(
                LinkStatus(
                    index=lk,
                    interface=self._config.link(lk).interface,
                    local_address=text.split()[1] if not text.startswith("unbound") else None,
                    up=not text.startswith("unbound"),
                    peers=peers,
                    reason=text,
                    # This link's own counts; drops tied to no link go with the first link, so the
                    # sum over links (status.json stats.transport) is the transport-wide total.
                    counters={"sent": 0, "received": 0, **_link_counters(stats, lk, lk == min(local))},
                )
            )
        return out


def _link_counters(stats: Any, link: int, with_unattributed: bool) -> dict[str, int]:
    """Return NativeTransport's per-link counters of `link` (plus link-less drops when asked)."""
    own: Counter[str] = Counter(stats.per_link.get(link, {}))
    if with_unattributed:
        own.update(stats.per_link.get(None, {}))
    return dict(own)


def _native_transport(config: ClusterConfig, me: NodeId) -> Transport:
    from cmanlk.runtime.linkstate import HeartbeatConfig, LinkMode
    from cmanlk.runtime.native import NativeConfig, NativeLink, NativeTransport

    mine = config.node(me)
    if mine is None:
        raise ConfigError([ConfigProblem(config.source, 0, "nodelist", f"node {me} is not in the nodelist")])
    links = tuple(
        NativeLink(
            link=index,
            interface=config.link(index).interface,
            local_address=address,
            port=config.link(index).port,
            priority=config.link(index).priority,
        )
        for index, address in mine.addresses.items()
    )
    key: bytes | None = None
    if config.is_crypto_enabled:
        from cmanlk.runtime.crypto import load_key_file  # needs the cryptography package

        key = load_key_file(config.cmanlk.keyfile)  # raises ConfigError (size, mode, unreadable)
    link0 = config.link(0)
    extra: dict[str, Any] = {} if link0.pong_count is None else {"pong_count": link0.pong_count}
    heartbeat = HeartbeatConfig.from_token(
        config.totem.token_ms,
        ping_interval_ms=link0.ping_interval_ms,
        timeout_ms=link0.ping_timeout_ms,
        **extra,
    )
    native = NativeTransport(
        NativeConfig(
            me=me,
            links=links,
            peers=config.node_addresses(),
            heartbeat=heartbeat,
            mode=LinkMode(config.link_mode),
            crypto=config.is_crypto_enabled,
            key=key,
            cluster_name=config.cluster_name,
            rebind_trigger=str(Path(config.cmanlk.run_dir) / "rebind"),
        )
    )
    adapter: Transport = _NativeAdapter(native, config)
    return adapter
