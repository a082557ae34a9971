"""A deliberately naive core for testing the simulator and checker without the real Totem.

It installs one configuration of the whole nodelist at start, multicasts each
message and delivers it on receipt (and to itself at once): no ordering, no
retransmission. Under reordering or loss the EVS checker must catch it.
"""

from __future__ import annotations

import random
import struct
from typing import Any

from cmanlk.totem.actions import (
    ConfigKind,
    Deliver,
    DeliverConfiguration,
    MembState,
    Multicast,
    PersistRingSeq,
    StateChanged,
)
from cmanlk.totem.config import TotemConfig
from cmanlk.totem.events import DeadlineReached, Event, McastRequested, PacketReceived, Started
from cmanlk.types import Instant, NodeId, RingId, ms


class NaiveCore:
    def __init__(self, config: TotemConfig, me: NodeId, rng: random.Random, ring_seq: int = 0) -> None:
        self.config = config
        self.me = me
        self.rng = rng
        self.ring = RingId(ring_seq + 4, min(config.nodes))
        self._deadline: Instant | None = None

    @property
    def next_deadline(self) -> Instant | None:
        return self._deadline

    def handle(self, event: Event) -> list[Any]:
        match event:
            case Started():
                # a jittered no-op timer, so randomness and timers take part in the run
                self._deadline = Instant(event.now + ms(self.rng.randint(10, 50)))
                return [
                    PersistRingSeq(self.ring.seq),
                    StateChanged(MembState.OPERATIONAL, "naive start", self.ring),
                    DeliverConfiguration(ConfigKind.REGULAR, self.ring, self.config.nodes),
                ]
            case McastRequested():
                data = struct.pack("<I", self.me) + event.payload
                others = tuple(n for n in self.config.nodes if n != self.me)
                return [Multicast(others, data), Deliver(self.ring, self.me, event.payload, event.guarantee)]
            case PacketReceived():
                (sender,) = struct.unpack_from("<I", event.data)
                return [Deliver(self.ring, NodeId(sender), event.data[4:])]
            case DeadlineReached():
                self._deadline = Instant(event.now + ms(self.rng.randint(10, 50)))
        return []


def naive_factory(config: TotemConfig, me: NodeId, rng: random.Random, ring_seq: int) -> NaiveCore:
    return NaiveCore(config, me, rng, ring_seq)


class SequencerCore(NaiveCore):
    """Fixed-sequencer total order (lowest node id orders everything): correct without faults.

    Used to show the checker raises no false alarm on a correct fault-free run.
    """

    def __init__(self, config: TotemConfig, me: NodeId, rng: random.Random, ring_seq: int = 0) -> None:
        super().__init__(config, me, rng, ring_seq)
        self.sequencer = min(config.nodes)

    def handle(self, event: Event) -> list[Any]:
        match event:
            case McastRequested():
                data = b"R" + struct.pack("<IB", self.me, event.guarantee) + event.payload
                if self.me == self.sequencer:
                    return self._order(data)
                return [Multicast((self.sequencer,), data)]
            case PacketReceived() if event.data[:1] == b"R":
                return self._order(event.data)
            case PacketReceived():
                sender, guarantee = struct.unpack_from("<IB", event.data, 1)
                return [Deliver(self.ring, NodeId(sender), event.data[6:], guarantee)]
        return super().handle(event)

    def _order(self, request: bytes) -> list[Any]:
        data = b"O" + request[1:]
        others = tuple(n for n in self.config.nodes if n != self.me)
        sender, guarantee = struct.unpack_from("<IB", data, 1)
        return [Multicast(others, data), Deliver(self.ring, NodeId(sender), data[6:], guarantee)]


def sequencer_factory(config: TotemConfig, me: NodeId, rng: random.Random, ring_seq: int) -> SequencerCore:
    return SequencerCore(config, me, rng, ring_seq)
