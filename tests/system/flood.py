"""A hostile sender for system tests: floods one cmanlkd with garbage and forged totem packets.

    python -m tests.system.flood HOST PORT --mode garbage|forged|spoof --count N [--sender ID] [--claim ID]

garbage: random bytes of random length (0..1500), plus datagrams starting with the totem magic.
forged: well-formed-looking totem packets that must be dropped: tokens and hold-cancels of a
ring that does not exist, wrong versions and types, truncated copies of valid packets, length
fields that promise more than the datagram holds. spoof: well-formed membership packets that
claim to come from node `--claim` (a member) while they leave from this host's address: JOINs
saying the third member failed (with a ring seq no ring has reached, so none is stale), leave
JOINs, merge detects, tokens and hold-cancels. Prints the number of datagrams sent.
"""

from __future__ import annotations

import argparse
import random
import socket
import struct

from cmanlk.totem import wire
from cmanlk.types import NodeId, RingId


def forged_packets(sender: int, rng: random.Random) -> list[bytes]:
    bogus_ring = RingId(0xFFFF_FFF0, NodeId(sender))
    token = wire.encode(
        wire.OrfToken(
            NodeId(sender), 5, 7, 5, NodeId(sender), bogus_ring, 0, 0, 0, (wire.RtrItem(bogus_ring, 3),)
        )
    )
    cancel = wire.encode(wire.TokenHoldCancel(NodeId(sender), bogus_ring))
    out = [token, cancel]
    out += [token[:k] for k in (1, 2, 4, 12, 13, 20, 40, 56)]  # truncated
    out.append(token[:2] + bytes([9]) + token[3:])  # wrong version
    out.append(token[:3] + bytes([77]) + token[4:])  # unknown type
    # rtr_list_entries promising 1000 entries in a 57-byte datagram
    out.append(token[:53] + struct.pack("<i", 1000))
    # a JOIN whose proc/failed counts promise far more ids than the datagram holds
    join = bytearray(wire.encode(wire.MembJoin(NodeId(sender), NodeId(sender), (NodeId(sender),), (), 1)))
    join[17:21] = struct.pack("<I", 0xFFFF_FFFF)
    out.append(bytes(join))
    out.append(b"\x70\xc0" + rng.randbytes(60))  # magic then noise
    return out


def spoofed_packets(claim: int, members: tuple[int, ...]) -> list[bytes]:
    me = NodeId(claim)
    others = tuple(NodeId(n) for n in members if n != claim)
    ring = RingId(1 << 40, me)
    everyone = tuple(sorted((me, *others)))
    return [
        wire.encode(wire.MembJoin(me, me, everyone, others[-1:], 1 << 40)),
        wire.encode(wire.MembJoin(NodeId(0), me, everyone, (me,), 1 << 40)),
        wire.encode(wire.MergeDetect(me, me, ring)),
        wire.encode(wire.OrfToken(me, 5, 1 << 30, 5, me, ring, 0, 0, 0)),
        wire.encode(wire.TokenHoldCancel(me, ring)),
    ]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--mode", choices=["garbage", "forged", "spoof"], required=True)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--sender", type=int, default=4)
    p.add_argument("--claim", type=int, default=2, help="spoof: the node id the packets claim")
    p.add_argument("--members", default="1,2,3", help="spoof: the ring's members")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sent = 0
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if args.mode == "spoof":
            forged = spoofed_packets(args.claim, tuple(int(n) for n in args.members.split(",")))
        else:
            forged = forged_packets(args.sender, rng)
        for i in range(args.count):
            if args.mode == "garbage":
                data = rng.randbytes(rng.randrange(0, 1500)) if i % 3 else b"\x70\xc0\x03" + rng.randbytes(50)
            else:
                data = forged[i % len(forged)]
            try:
                sock.sendto(data, (args.host, args.port))
                sent += 1
            except OSError:
                pass
    print(sent)


if __name__ == "__main__":
    main()
