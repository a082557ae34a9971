"""Totem timers and constants, with corosync 3's defaults and derivations.

Every value a user can set in corosync.conf's `totem` section has a field here,
in milliseconds (suffix `_ms`) or as a count. `TotemConfig.derive()` applies the
same derivations corosync's totemconfig does, so the same corosync.conf gives
the same effective timers:

- token: token + (nodes - 2) * token_coefficient when the nodelist has more
  than two nodes (so larger rings get proportionally more time per rotation);
- token_retransmit: token / (token_retransmits_before_loss_const + 0.2);
- hold: token_retransmit * 0.8 - 10 ms (corosync subtracts one kernel tick, HZ=100);
- consensus: 1.2 * token, and never below join;
- token_warning: 75 % of token.

An explicit value in the file wins over a derived one, as in corosync.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cmanlk.types import Duration, NodeId, ms

# Defaults of corosync 3.1.7 (exec/totemconfig.c), in ms or counts.
DEFAULT_TOKEN_MS = 3000
DEFAULT_TOKEN_COEFFICIENT_MS = 650
DEFAULT_TOKEN_RETRANSMITS_BEFORE_LOSS = 4
DEFAULT_JOIN_MS = 50
DEFAULT_MERGE_MS = 200
DEFAULT_DOWNCHECK_MS = 1000
DEFAULT_FAIL_RECV_CONST = 2500
DEFAULT_SEQNO_UNCHANGED_CONST = 30
DEFAULT_MISS_COUNT_CONST = 5
DEFAULT_WINDOW_SIZE = 50
DEFAULT_MAX_MESSAGES = 17
DEFAULT_MAX_NETWORK_DELAY_MS = 50
DEFAULT_SEND_JOIN_MS = 0
DEFAULT_NETMTU = 1500
KERNEL_TICK_MS = 10  # corosync subtracts one tick (1000/HZ) from hold and assumes HZ=100.


class SettingsConflict(ValueError):
    """Two totem settings corosync would refuse together; `key` is the totem key to blame."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class TotemConfig:
    """Effective totem settings of one node. Build it with `TotemConfig.derive()`.

    `nodes` is the configured nodelist (ids only; addresses belong to the transport).
    """

    nodes: tuple[NodeId, ...]
    token_ms: int
    token_retransmit_ms: int
    hold_ms: int
    token_warning_ms: int
    join_ms: int
    send_join_ms: int
    consensus_ms: int
    merge_ms: int
    downcheck_ms: int
    fail_recv_const: int
    seqno_unchanged_const: int
    miss_count_const: int
    window_size: int
    max_messages: int
    max_network_delay_ms: int
    token_retransmits_before_loss_const: int
    netmtu: int = DEFAULT_NETMTU
    cluster_name: str = ""

    @classmethod
    def derive(
        cls,
        nodes: tuple[NodeId, ...] | list[NodeId],
        *,
        token_ms: int = DEFAULT_TOKEN_MS,
        token_coefficient_ms: int = DEFAULT_TOKEN_COEFFICIENT_MS,
        token_retransmits_before_loss_const: int = DEFAULT_TOKEN_RETRANSMITS_BEFORE_LOSS,
        token_retransmit_ms: int | None = None,
        hold_ms: int | None = None,
        token_warning_percent: int = 75,
        join_ms: int = DEFAULT_JOIN_MS,
        send_join_ms: int = DEFAULT_SEND_JOIN_MS,
        consensus_ms: int | None = None,
        merge_ms: int = DEFAULT_MERGE_MS,
        downcheck_ms: int = DEFAULT_DOWNCHECK_MS,
        fail_recv_const: int = DEFAULT_FAIL_RECV_CONST,
        seqno_unchanged_const: int = DEFAULT_SEQNO_UNCHANGED_CONST,
        miss_count_const: int = DEFAULT_MISS_COUNT_CONST,
        window_size: int = DEFAULT_WINDOW_SIZE,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_network_delay_ms: int = DEFAULT_MAX_NETWORK_DELAY_MS,
        netmtu: int = DEFAULT_NETMTU,
        cluster_name: str = "",
    ) -> TotemConfig:
        """Return the effective config for a nodelist, applying corosync's derivations.

        Raises SettingsConflict (a ValueError naming the key to blame) for a combination
        corosync would refuse: consensus < join, max_messages > window_size.
        """
        node_ids = tuple(sorted(set(nodes)))
        effective_token = token_ms
        if len(node_ids) > 2:
            effective_token += (len(node_ids) - 2) * token_coefficient_ms
        if token_retransmit_ms is None:
            token_retransmit_ms = int(effective_token / (token_retransmits_before_loss_const + 0.2))
        if hold_ms is None:
            hold_ms = max(1, int(token_retransmit_ms * 0.8 - KERNEL_TICK_MS))
        if consensus_ms is None:
            consensus_ms = max(int(effective_token * 1.2), join_ms)
        if consensus_ms < join_ms:
            raise SettingsConflict(
                "consensus", f"consensus ({consensus_ms} ms) must be at least join ({join_ms} ms)"
            )
        if max_messages > window_size:
            raise SettingsConflict(
                "max_messages", f"max_messages ({max_messages}) must not exceed window_size ({window_size})"
            )
        return cls(
            nodes=node_ids,
            token_ms=effective_token,
            token_retransmit_ms=token_retransmit_ms,
            hold_ms=hold_ms,
            token_warning_ms=effective_token * token_warning_percent // 100,
            join_ms=join_ms,
            send_join_ms=send_join_ms,
            consensus_ms=consensus_ms,
            merge_ms=merge_ms,
            downcheck_ms=downcheck_ms,
            fail_recv_const=fail_recv_const,
            seqno_unchanged_const=seqno_unchanged_const,
            miss_count_const=miss_count_const,
            window_size=window_size,
            max_messages=max_messages,
            max_network_delay_ms=max_network_delay_ms,
            token_retransmits_before_loss_const=token_retransmits_before_loss_const,
            netmtu=netmtu,
            cluster_name=cluster_name,
        )

    def with_nodes(self, nodes: tuple[NodeId, ...]) -> TotemConfig:
        """Return a copy with another nodelist (SIGHUP reload); timers are kept as they are."""
        return replace(self, nodes=tuple(sorted(set(nodes))))

    @property
    def token(self) -> Duration:
        return ms(self.token_ms)

    @property
    def token_retransmit(self) -> Duration:
        return ms(self.token_retransmit_ms)

    @property
    def hold(self) -> Duration:
        return ms(self.hold_ms)

    @property
    def join(self) -> Duration:
        return ms(self.join_ms)

    @property
    def consensus(self) -> Duration:
        return ms(self.consensus_ms)

    @property
    def merge(self) -> Duration:
        return ms(self.merge_ms)

    @property
    def max_frame_bytes(self) -> int:
        """Largest totempg frame: netmtu less room for an MCAST header and an encapsulating one."""
        return self.netmtu - 2 * 45
