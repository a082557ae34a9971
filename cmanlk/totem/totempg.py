"""totempg: packing and fragmentation of application messages into totem MCAST payloads.

Corosync's totempg layer (exec/totempg.c, 3.1.7) sits between the services and
totemsrp. Every MCAST payload is one *frame* (shared/reference/corosync-wire.md §4):

    i16 version (0) · i16 type (0) · u8 fragmented · u8 continuation · u16 msg_count
    · msg_count × u16 piece length · the pieces, back to back

A piece is a whole application message, the first part of one (only as the
last piece, `fragmented` = k ≠ 0), or the rest of one (only as the first piece,
`continuation` = the k of the previous frame from the same originator). Small
messages are packed several to a frame; large ones run over consecutive frames
of the same originator, which totemsrp delivers in order and without gaps, so the
receiver reassembles per originator.

Sender rules we keep from corosync, so our frames look like its frames:
- a frame holds at most `max_frame_bytes` (netmtu − 2 × 45 = 1410 by default);
- a message is packed whole only while it leaves room for one more length field
  and a byte (corosync's `len + used < room − 2` test); otherwise the frame is
  filled with as much of it as fits and closed at once;
- the 8-bit fragment counter starts at 1 for each message, grows by one per
  fragmented frame, and skips 0 when it wraps (0 means "not fragmented").
A 4189-byte message therefore goes out as 1400 + 1400 + 1389 bytes with
(fragmented, continuation) = (1, 0), (2, 1), (0, 2), as captured from corosync.

Deviations from corosync, and why:
- Packing is lazy: `pop_frame()` builds a frame from the queue when the core
  may send (on the token), instead of corosync's eager staging buffer. The tail
  of a fragmented message is therefore packed together with the messages queued
  behind it (corosync sends a single-iovec tail alone); both are legal frames.
  Corosync restarts the counter per message because each message begins with
  its small group-header iovec; we restart it explicitly.
- A token visit does not end inside a message it could have sent whole in a later
  visit (`pop_frame(frames_left)`, the core's `_send_new`): a message is started
  only when the frames the visit may still send carry it to its end (one longer
  than a whole visit, max_messages frames, is started at a visit's start). So a
  ring change never falls inside one of our messages below ~24 KB, and a node
  joining then never meets the rest of a message it could not assemble. corosync
  fragments eagerly and may end a visit anywhere; on a ring change it continues
  a half-sent message in the new ring where it stopped, and so do we (the rest
  waits in the first queue until the new ring's sync is over, base.py).

Receiving is corosync's exactly (totempg_deliver_fn), so that a corosync node
and a cmanlkd node in one ring drop the same messages: on a continuation that
does not match, the whole frame is thrown away (complete messages packed with
the tail too), then every later frame of that sender up to one with fragmented
0 or 1, which goes too. Each node keeps two sets of assemblies, the second used
while waiting for the transitional ack (the core selects which `Unpacker`).
Deviation: corosync does not check the frame's version/type; we refuse anything
but 0/0 and any frame whose lengths do not add up (corosync logs and ignores those).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field

from cmanlk.errors import ErrorCode, MalformedPacket, QueueFull, TooLarge, UsageError
from cmanlk.totem.events import Guarantee
from cmanlk.totem.wire import PROCESSOR_COUNT_MAX
from cmanlk.types import NodeId

PG_VERSION = 0
PG_TYPE = 0
FRAME_HEADER_SIZE = 8  # i16 version, i16 type, u8 fragmented, u8 continuation, u16 msg_count
LEN_SIZE = 2  # one u16 piece length

MESSAGE_SIZE_MAX = 1024 * 1024
"""Largest application message (bytes): corosync's MESSAGE_SIZE_MAX."""

REASSEMBLY_SLACK_BYTES = 64 * 1024
"""Reassembly may exceed MESSAGE_SIZE_MAX by this much before we give up on it: corosync's
assembly buffer is MESSAGE_SIZE_MAX + KNET_MAX_PACKET_SIZE (64 KiB) long, so we accept what it accepts."""

DEFAULT_MAX_QUEUE_BYTES = 4 * MESSAGE_SIZE_MAX
"""Send-queue bound (bytes): corosync's new-message queue holds (4 × MESSAGE_SIZE_MAX) / netmtu frames,
i.e. about 4 MiB of payload; past that a client must wait, as with corosync's CS_ERR_TRY_AGAIN."""

QUEUE_ENTRY_COST_BYTES = 64
"""Bytes charged per queued message on top of its payload, so that a flood of tiny messages is bounded
by memory actually used (a Python bytes object and queue slot cost about this much)."""

MAX_ASSEMBLIES = PROCESSOR_COUNT_MAX
"""At most this many originators may have a half-assembled message at once (a ring has at most
PROCESSOR_COUNT_MAX members); each costs at most MESSAGE_SIZE_MAX + REASSEMBLY_SLACK_BYTES."""

MAX_FRAME_BYTES = 0xFFFF
"""Largest frame we build: a UDP datagram's limit, and it keeps every piece length within a u16."""

FRAGMENT_COUNTER_MODULUS = 256  # the counter is a u8 on the wire

_HEADER_LE = struct.Struct("<hhBBH")
_U16_LE = struct.Struct("<H")
_HEADER_BE = struct.Struct(">hhBBH")


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded totempg frame: its flags and its pieces in order."""

    fragmented: int
    continuation: int
    pieces: tuple[bytes, ...]


def encode_frame(frame: Frame) -> bytes:
    """Return the wire bytes of `frame` (little-endian, as an x86 corosync writes them).

    Raises ValueError if a flag is not a u8, there are no pieces, or a piece exceeds a u16.
    """
    if not 0 <= frame.fragmented <= 255 or not 0 <= frame.continuation <= 255:
        raise ValueError(f"flags out of range: {frame.fragmented}, {frame.continuation}")
    if not 0 < len(frame.pieces) <= 0xFFFF or any(len(p) > 0xFFFF for p in frame.pieces):
        raise ValueError("a frame holds 1..65535 pieces of at most 65535 bytes")
    head = _HEADER_LE.pack(PG_VERSION, PG_TYPE, frame.fragmented, frame.continuation, len(frame.pieces))
    lens = struct.pack(f"<{len(frame.pieces)}H", *(len(p) for p in frame.pieces))
    return head + lens + b"".join(frame.pieces)


def frame_layout(data: bytes, *, swapped: bool = False) -> tuple[int, int, int, tuple[int, ...]]:
    """Check one totempg frame's header and piece lengths without copying any piece.

    Returns (fragmented, continuation, offset of the first piece, the pieces' lengths); the
    pieces follow each other from that offset to the frame's end. Raises MalformedPacket with
    reason pg-short, pg-version, pg-empty, pg-short-lens or pg-length.
    """
    header = _HEADER_BE if swapped else _HEADER_LE
    if len(data) < FRAME_HEADER_SIZE:
        raise MalformedPacket("pg-short", f"{len(data)} < {FRAME_HEADER_SIZE} bytes")
    version, ptype, fragmented, continuation, count = header.unpack_from(data, 0)
    if version != PG_VERSION or ptype != PG_TYPE:
        raise MalformedPacket("pg-version", f"version {version} type {ptype}")
    if count == 0:
        # corosync never sends an empty frame (it only sends when it has packed something).
        raise MalformedPacket("pg-empty", "msg_count 0")
    body = FRAME_HEADER_SIZE + LEN_SIZE * count
    if len(data) < body:
        raise MalformedPacket("pg-short-lens", f"{count} lengths need {body} bytes, have {len(data)}")
    lens = struct.unpack_from(("<" if not swapped else ">") + f"{count}H", data, FRAME_HEADER_SIZE)
    if body + sum(lens) != len(data):
        raise MalformedPacket("pg-length", f"pieces sum to {sum(lens)}, frame carries {len(data) - body}")
    return fragmented, continuation, body, lens


def decode_frame(data: bytes, *, swapped: bool = False) -> Frame:
    """Parse one totempg frame; `swapped` when the MCAST came with a byte-swapped magic (big-endian).

    Raises MalformedPacket as frame_layout does.
    """
    fragmented, continuation, offset, lens = frame_layout(data, swapped=swapped)
    pieces = []
    for n in lens:
        pieces.append(bytes(data[offset : offset + n]))
        offset += n
    return Frame(fragmented, continuation, tuple(pieces))


class Packer:
    """The send side: a bounded queue of application messages, popped as ≤ max_frame_bytes frames.

    A frame never mixes guarantees. A message being fragmented stays at the head of the queue until
    its last piece has been popped, so its frames are consecutive, as the receiver requires.
    """

    def __init__(self, max_frame_bytes: int, max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES) -> None:
        """Raises ValueError if a frame could not carry a header, one length and a few bytes, or
        if it is so large that a piece could overflow its u16 length."""
        if max_frame_bytes < FRAME_HEADER_SIZE + 2 * LEN_SIZE + 4:
            raise ValueError(f"max_frame_bytes {max_frame_bytes} is too small for a totempg frame")
        if max_frame_bytes > MAX_FRAME_BYTES:
            raise ValueError(f"max_frame_bytes {max_frame_bytes} exceeds {MAX_FRAME_BYTES}")
        if max_queue_bytes <= 0:
            raise ValueError(f"max_queue_bytes must be positive, got {max_queue_bytes}")
        self._max_frame_bytes = max_frame_bytes
        self._max_queue_bytes = max_queue_bytes
        self._queue: deque[_Queued] = deque()
        self._queued_bytes = 0  # payload bytes not yet popped + QUEUE_ENTRY_COST_BYTES per message
        self._offset = 0  # bytes of the head message already sent
        self._continuation = 0  # the `fragmented` value of the last frame if it ended in a fragment
        self._counter = 1  # next fragment counter value (u8, never 0)

    @property
    def max_message_bytes(self) -> int:
        """The largest payload `push` accepts."""
        return MESSAGE_SIZE_MAX

    @property
    def pending_messages(self) -> int:
        """Messages not yet completely popped (a half-sent message counts)."""
        return len(self._queue)

    @property
    def pending_bytes(self) -> int:
        """Payload bytes still to be popped."""
        return self._queued_bytes - QUEUE_ENTRY_COST_BYTES * len(self._queue)

    @property
    def free_bytes(self) -> int:
        """Queue room left, in `push`'s accounting (a message costs its size plus
        QUEUE_ENTRY_COST_BYTES): a message of `free_bytes - QUEUE_ENTRY_COST_BYTES` still fits."""
        return self._max_queue_bytes - self._queued_bytes

    def has_pending(self) -> bool:
        """Is there anything left to pop?"""
        return bool(self._queue)

    def push(self, payload: bytes, guarantee: Guarantee = Guarantee.AGREED) -> None:
        """Queue one application message; the queue is unchanged when it raises.

        Raises UsageError(invalid_param) for an empty message, TooLarge past MESSAGE_SIZE_MAX,
        QueueFull (try_again) when it would take the queue past max_queue_bytes.
        """
        size = len(payload)
        if size == 0:
            # corosync drops zero-length pieces and its receivers would misparse an empty message.
            raise UsageError(ErrorCode.INVALID_PARAM, "cannot send an empty message")
        if size > MESSAGE_SIZE_MAX:
            raise TooLarge(f"message of {size} bytes exceeds the maximum of {MESSAGE_SIZE_MAX} bytes")
        cost = size + QUEUE_ENTRY_COST_BYTES
        if self._queued_bytes + cost > self._max_queue_bytes:
            raise QueueFull(
                f"send queue full: {len(self._queue)} messages, {self._queued_bytes} of "
                f"{self._max_queue_bytes} bytes used, cannot add {size} bytes; retry after the token"
            )
        self._queue.append(_Queued(bytes(payload), Guarantee(guarantee)))
        self._queued_bytes += cost

    def has_partial(self) -> bool:
        """Is the head message half sent (its next frame must continue it)?"""
        return self._offset > 0

    def head_frames(self) -> int:
        """Frames the head message still needs, each a frame of its own (0: nothing queued)."""
        if not self._queue:
            return 0
        return self._frames_after(len(self._queue[0].payload) - self._offset)

    def pop_frame(self, frames_left: int | None = None) -> tuple[bytes, Guarantee] | None:
        """Return the next frame and the guarantee of every message in it, or None if nothing is queued.

        `frames_left`: how many frames this token visit may still send, this one included (None: no
        limit). A message the visit cannot send to its end is not started in it, except by a frame that
        would otherwise be empty: so a message of up to `frames_left` frames never stays half sent when
        the visit ends, and a ring change cannot fall inside it (module docstring).
        """
        if not self._queue:
            return None
        guarantee = self._queue[0].guarantee
        builder = _FrameBuilder(self._max_frame_bytes, self._continuation)
        self._continuation = 0
        while self._queue and self._queue[0].guarantee == guarantee:
            if not self._add_head(builder, frames_left):
                break
        return builder.encode(), guarantee

    def _add_head(self, builder: _FrameBuilder, frames_left: int | None) -> bool:
        """Put (part of) the head message into `builder`; return whether the frame has room for more."""
        head = self._queue[0]
        if self._offset == 0:
            self._counter = 1  # a new message: corosync restarts the counter (see module docstring)
        remaining = len(head.payload) - self._offset
        room = builder.room_for_next_piece()
        if (frames_left is not None and self._offset == 0 and builder.pieces and remaining > room
                and 1 + self._frames_after(remaining - room) > frames_left):  # fmt: skip
            return False  # it would stay half sent at the visit's end: it starts in a later frame
        if remaining < room - LEN_SIZE:
            # Fits with room for one more length and a byte: pack it and keep filling the frame.
            builder.add(head.payload[self._offset :] if self._offset else head.payload)
            self._finish_head()
            return True
        take = min(remaining, room)
        builder.add(head.payload[self._offset : self._offset + take])
        if take == remaining:
            self._finish_head()  # it just fits: corosync sends the frame at once, unfragmented
            return False
        self._offset += take
        self._queued_bytes -= take
        builder.fragmented = self._counter
        self._continuation = self._counter
        self._counter = self._counter % (FRAGMENT_COUNTER_MODULUS - 1) + 1  # 1..255, skipping 0
        return False

    def _frames_after(self, remaining: int) -> int:
        per_frame = self._max_frame_bytes - FRAME_HEADER_SIZE - LEN_SIZE
        return (remaining + per_frame - 1) // per_frame

    def _finish_head(self) -> None:
        head = self._queue.popleft()
        self._queued_bytes -= len(head.payload) - self._offset + QUEUE_ENTRY_COST_BYTES
        self._offset = 0


@dataclass(slots=True)
class UnpackerStats:
    """What the receive side threw away (counters only grow)."""

    broken_messages: int = 0  # messages lost to a broken continuation or an unfinished start
    discarded_pieces: int = 0  # pieces dropped because they continued a message we do not have
    discarded_bytes: int = 0


class Unpacker:
    """The receive side: turns each originator's frames, in delivery order, back into messages.

    It assembles exactly as corosync's totempg_deliver_fn does, so that a cmanlkd node and a corosync
    node in one ring deliver the same messages even when a continuation is broken (a sender's
    half-sent message meets a node that never saw its head, or a clean start meets a half-assembled
    message): the frame whose continuation does not match is thrown away whole, and so is every
    later frame of that sender up to one whose `fragmented` is 0 or 1, which is thrown away too (its
    last piece, when `fragmented` is 1, is kept as corosync keeps it). Counted in `stats`.
    """

    def __init__(self) -> None:
        self._assemblies: dict[NodeId, _Assembly] = {}
        self.stats = UnpackerStats()

    def feed(self, sender: NodeId, frame: bytes, *, swapped: bool = False) -> list[bytes]:
        """Take one delivered MCAST payload of `sender`; return the application messages it completes.

        `swapped` says the MCAST arrived with a byte-swapped magic. A frame that cannot be parsed
        raises MalformedPacket and leaves this sender's state unchanged. A reassembly growing past
        MESSAGE_SIZE_MAX + REASSEMBLY_SLACK_BYTES, or an originator past MAX_ASSEMBLIES, raises
        MalformedPacket ("pg-too-large", "pg-too-many-assemblies"); the partial message is then gone.
        """
        parsed = decode_frame(frame, swapped=swapped)
        pieces = parsed.pieces
        state = self._assemblies.get(sender)
        if state is None:
            state = _Assembly(bytearray(), 0, False)
        kept = len(state.data)
        if kept + sum(len(p) for p in pieces) > MESSAGE_SIZE_MAX + REASSEMBLY_SLACK_BYTES:
            self.stats.broken_messages += 1
            self.stats.discarded_bytes += kept
            self._assemblies.pop(sender, None)
            raise MalformedPacket("pg-too-large", f"reassembly from node {sender} passed {kept} bytes")
        if parsed.fragmented and sender not in self._assemblies and len(self._assemblies) >= MAX_ASSEMBLIES:
            self.stats.broken_messages += 1
            raise MalformedPacket("pg-too-many-assemblies", f"{len(self._assemblies)} originators pending")
        data = state.data
        for p in pieces:
            data += p
        lens = [len(p) for p in pieces]
        complete = len(pieces) - 1 if parsed.fragmented else len(pieces)
        index = kept
        out: list[bytes] = []
        if state.throw_away:
            self.stats.discarded_pieces += len(pieces)
            self.stats.discarded_bytes += sum(lens)
            if parsed.fragmented in (0, 1):
                state.throw_away = False
                index += lens[0]
        elif parsed.continuation == state.last_frag:
            state.last_frag = parsed.fragmented
            start = 0
            length = index + lens[0]
            for i in range(complete):
                out.append(bytes(data[start : start + length]))
                index += lens[i]
                start = index
                if i < complete - 1:
                    length = lens[i + 1]
        else:
            state.throw_away = True
            self.stats.broken_messages += 1
            self.stats.discarded_pieces += len(pieces)
            self.stats.discarded_bytes += len(data)
        if parsed.fragmented == 0:
            self._assemblies.pop(sender, None)
            return out
        last = lens[complete]
        if len(pieces) > 1:
            state.data = bytearray(data[index : index + last])
        else:
            del data[index + last :]
        self._assemblies[sender] = state
        return out

    def take_edges(
        self,
        sender: NodeId,
        frame: bytes,
        fragmented: int,
        continuation: int,
        start: int,
        lens: tuple[int, ...],
    ) -> tuple[bytes | None, int, tuple[int, ...]] | None:
        """`feed` for the fused receive path, without copying the frame's whole pieces.

        `frame`'s layout is frame_layout's (fragmented, continuation, start, lens). In the common
        cases — nothing of `sender` half assembled and no continuation, or a continuation that
        matches what is half assembled — it does what `feed` does to this sender's state (a last
        piece of a fragmented frame is kept, a first piece completes the kept head) and returns
        (the message the first piece completed or None, the offset of the first whole piece, the
        whole pieces' lengths): the messages `feed` would return are that one, then those pieces.
        Anything else (a broken continuation, a throw-away in progress, a bound reached) returns
        None with nothing changed: the caller feeds the frame.
        """
        state = self._assemblies.get(sender)
        if state is None:
            if continuation != 0:
                return None
            kept = 0
        elif state.throw_away or continuation != state.last_frag:
            return None
        else:
            kept = len(state.data)
        if kept + len(frame) - start > MESSAGE_SIZE_MAX + REASSEMBLY_SLACK_BYTES:
            return None
        if fragmented and state is None and len(self._assemblies) >= MAX_ASSEMBLIES:
            return None
        count = len(lens)
        complete = count - 1 if fragmented else count
        first: bytes | None = None
        lo = 0
        off = start
        if state is not None:
            if complete == 0:  # one piece that neither starts nor ends a message: the head grows
                state.data += frame[start:]
                state.last_frag = fragmented
                return None, off, ()
            first = bytes(state.data) + frame[start : start + lens[0]]
            lo = 1
            off += lens[0]
        whole = lens[lo:complete]
        if not fragmented:
            if state is not None:
                del self._assemblies[sender]
            return first, off, whole
        tail = len(frame) - lens[-1]
        if state is None:
            self._assemblies[sender] = _Assembly(bytearray(frame[tail:]), fragmented, False)
        else:
            state.data = bytearray(frame[tail:])
            state.last_frag = fragmented
        return first, off, whole

    def forget(self, sender: NodeId) -> None:
        """Drop any half-assembled message of `sender` (it left the ring), without counting it."""
        self._assemblies.pop(sender, None)

    def reset(self) -> None:
        """Drop every half-assembled message, without counting them."""
        self._assemblies.clear()

    def has_partial(self, sender: NodeId) -> bool:
        """Is a message of `sender` half assembled (or being discarded) here?"""
        return sender in self._assemblies


@dataclass(slots=True)
class _Queued:
    payload: bytes
    guarantee: Guarantee


@dataclass(slots=True)
class _Assembly:
    data: bytearray  # corosync's assembly buffer up to its index: the head of the next message
    last_frag: int  # the `fragmented` of the frame that left the head (corosync's last_frag_num)
    throw_away: bool  # corosync's THROW_AWAY_ACTIVE: discarding up to a frame with fragmented 0 or 1


@dataclass(slots=True)
class _FrameBuilder:
    max_frame_bytes: int
    continuation: int
    fragmented: int = 0
    pieces: list[bytes] = field(default_factory=list)
    used: int = 0

    def room_for_next_piece(self) -> int:
        """Bytes a next piece may have, after the header and its own length field."""
        return self.max_frame_bytes - FRAME_HEADER_SIZE - LEN_SIZE * (len(self.pieces) + 1) - self.used

    def add(self, piece: bytes) -> None:
        self.pieces.append(piece)
        self.used += len(piece)

    def encode(self) -> bytes:
        # encode_frame's bytes without its checks and its Frame: the packer only builds frames of
        # 1..max pieces within max_frame_bytes (<= MAX_FRAME_BYTES), and flags of one byte.
        pieces = self.pieces
        count = len(pieces)
        head = _HEADER_LE.pack(PG_VERSION, PG_TYPE, self.fragmented, self.continuation, count)
        if count == 1:
            return head + _U16_LE.pack(len(pieces[0])) + pieces[0]
        return head + struct.pack(f"<{count}H", *map(len, pieces)) + b"".join(pieces)
