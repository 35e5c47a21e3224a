#!/usr/bin/python3
"""Sends malformed and random packets towards a server through tcpd's gateway.

Run inside the client namespace of a netlab lab (TestRobustMalformedPackets
does). Every packet is an Ethernet frame addressed to the gateway's MAC on the
client's veth, from a source address inside tcpd's client prefixes, so that
the gateway routes it into tcpd's TUN if the gateway's kernel lets it
through at all. Prints one JSON object: how many packets of each kind it
sent.
"""

import argparse
import json
import random

from scapy.all import (
    IP,
    TCP,
    Ether,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    Raw,
    conf,
    fragment,
)


def checksum(b):
    """The Internet checksum (RFC 1071) of b."""
    if len(b) % 2:
        b += b"\x00"
    s = sum(int.from_bytes(b[i : i + 2], "big") for i in range(0, len(b), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iface", required=True)
    ap.add_argument("--dst-mac", required=True)
    ap.add_argument("--dst4", required=True)
    ap.add_argument("--dst6", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    conf.verb = 0

    def src4():
        # Inside 100.64.0.0/10, on the lab's /24 but owned by nobody.
        return "100.64.1.%d" % rng.randint(100, 250)

    def src6():
        return "fd64::%x" % rng.randint(0x100, 0xFFFF)

    def sport():
        return rng.randint(1024, 65535)

    def dport():
        # Mostly the live server port, so that SYN-like packets get as far
        # as tcpd's handler; sometimes any port.
        return args.port if rng.random() < 0.7 else rng.randint(1, 65535)

    def rbytes(n):
        return bytes(rng.getrandbits(8) for _ in range(n))

    def tcp(**kw):
        kw.setdefault("sport", sport())
        kw.setdefault("dport", dport())
        kw.setdefault("seq", rng.getrandbits(32))
        kw.setdefault("window", rng.randint(0, 65535))
        return TCP(**kw)

    def ip4(**kw):
        return IP(src=src4(), dst=args.dst4, **kw)

    def ip6(**kw):
        return IPv6(src=src6(), dst=args.dst6, **kw)

    odd_flags = ["SF", "SR", "SRF", "", "FPU", "FSRPAUEC", "SA", "R", "F", "U", "SU", "SEC"]

    # Each kind returns raw IP bytes (a list, for fragments).
    def bad_tcp_checksum():
        return [bytes(ip4() / tcp(flags="S", chksum=rng.getrandbits(16)))]

    def truncated_tcp_header():
        return [bytes(ip4(proto=6) / Raw(rbytes(rng.randint(0, 19))))]

    def bad_data_offset():
        return [bytes(ip4() / tcp(flags="S", dataofs=rng.choice([0, 1, 4, 15])) / Raw(rbytes(rng.randint(0, 8))))]

    def odd_flag_combo():
        p = ip4() if rng.random() < 0.8 else ip6()
        return [bytes(p / tcp(flags=rng.choice(odd_flags), ack=rng.getrandbits(32)) / Raw(rbytes(rng.randint(0, 40))))]

    def ip_options():
        opts = rng.choice([
            b"\x01" * 4,  # no-operations
            b"\x07\x07\x04" + b"\x00" * 5,  # record route
            b"\x44\x0c\x05\x00" + b"\x00" * 8,  # timestamp
            rbytes(8),  # garbage
            b"\x83\x03\x04\x00",  # truncated loose source route
            b"\x94\x04\x00\x00",  # router alert
        ])
        opts += b"\x00" * (-len(opts) % 4)
        b = bytearray(bytes(ip4() / tcp(flags="S")))
        b[20:20] = opts
        b[0] = 0x40 | (5 + len(opts) // 4)
        b[2:4] = len(b).to_bytes(2, "big")
        b[10:12] = b"\x00\x00"
        b[10:12] = checksum(bytes(b[: (b[0] & 0x0F) * 4])).to_bytes(2, "big")
        return [bytes(b)]

    def ip_fragments():
        p = ip4(id=rng.getrandbits(16)) / tcp(flags=rng.choice(["S", "A", "PA"])) / Raw(rbytes(rng.randint(16, 200)))
        frags = [bytes(f) for f in fragment(p, fragsize=rng.choice([8, 16, 24]))]
        pick = rng.random()
        if pick < 0.3:
            return frags[:1]  # first only: never completes
        if pick < 0.5:
            return frags[1:]  # missing the first
        if pick < 0.7:
            return frags + frags[:1]  # a duplicate first fragment
        return frags

    def wrong_version():
        b = bytearray(bytes(ip4() / tcp(flags="S")))
        b[0] = (rng.choice([0, 1, 5, 7, 15]) << 4) | (b[0] & 0x0F)
        return [bytes(b)]

    def bad_ip_length():
        b = bytearray(bytes(ip4() / tcp(flags="S") / Raw(rbytes(rng.randint(0, 20)))))
        total = rng.choice([0, 19, 20, 30, len(b) - 1, len(b) + 1, 1500, 65535])
        b[2:4] = total.to_bytes(2, "big")
        return [bytes(b)]

    def bad_ihl():
        b = bytearray(bytes(ip4() / tcp(flags="S")))
        b[0] = 0x40 | rng.choice([0, 1, 4, 15])
        return [bytes(b)]

    def bad_ip_checksum():
        return [bytes(ip4(chksum=rng.getrandbits(16)) / tcp(flags="S"))]

    def random_payload():
        return [bytes(ip4(proto=6) / Raw(rbytes(rng.randint(20, 200))))]

    def random_bytes():
        n = rng.randint(1, 100)
        b = bytearray(rbytes(n))
        if n > 0:
            b[0] = (rng.choice([4, 6]) << 4) | (b[0] & 0x0F)
        return [bytes(b)]

    def tcp_option_garbage():
        opts = rng.choice([
            b"\x02\x00",  # MSS with length 0
            b"\x02\x04\x00\x00",  # MSS 0
            b"\x03\x03\xff\x00",  # window scale 255
            b"\x04\x07",  # SACK permitted, bad length
            b"\x08\x0a" + rbytes(4),  # truncated timestamp
            b"\x05\x03" + rbytes(2),  # SACK block with bad length
            b"\xfe\xff" + rbytes(2),  # length past the header
        ])
        opts += b"\x00" * (-len(opts) % 4)
        t = tcp(flags=rng.choice(["S", "SA", "A"]))
        t.dataofs = 5 + len(opts) // 4
        return [bytes(ip4() / t / Raw(opts))]

    def stray_segment():
        return [bytes(ip4() / tcp(flags=rng.choice(["A", "PA", "FA", "RA"]), ack=rng.getrandbits(32)) / Raw(rbytes(rng.randint(0, 100))))]

    def v6_bad_checksum():
        return [bytes(ip6() / tcp(flags="S", chksum=rng.getrandbits(16)))]

    def v6_ext_headers():
        ext = rng.choice([IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrFragment(m=1, id=rng.getrandbits(32))])
        return [bytes(ip6() / ext / tcp(flags="S"))]

    def v6_bad_length():
        b = bytearray(bytes(ip6() / tcp(flags="S")))
        b[4:6] = rng.choice([0, 1, 19, 200, 65535]).to_bytes(2, "big")
        return [bytes(b)]

    kinds = [
        bad_tcp_checksum, truncated_tcp_header, bad_data_offset, odd_flag_combo,
        ip_options, ip_fragments, wrong_version, bad_ip_length, bad_ihl,
        bad_ip_checksum, random_payload, random_bytes, tcp_option_garbage,
        stray_segment, v6_bad_checksum, v6_ext_headers, v6_bad_length,
    ]
    counts = {k.__name__: 0 for k in kinds}
    frames = []
    while len(frames) < args.count:
        k = rng.choice(kinds)
        for raw in k():
            if len(frames) == args.count:
                break
            ethertype = 0x86DD if raw[0] >> 4 == 6 or k.__name__.startswith("v6_") else 0x0800
            frames.append(Ether(dst=args.dst_mac, type=ethertype) / Raw(raw))
            counts[k.__name__] += 1
    sock = conf.L2socket(iface=args.iface)
    try:
        for f in frames:
            sock.send(f)
    finally:
        sock.close()
    print(json.dumps({"sent": len(frames), "kinds": counts}))


if __name__ == "__main__":
    main()
