#!/usr/bin/python3
"""Sends tcpd segments whose acknowledgment no TCP takes, and records the replies.

Run inside the client namespace of a netlab lab (TestUnacceptableACK does),
as a client at an address the client's kernel does not own (--src), which
the gateway reaches at a MAC address nobody has, so that the script alone
answers for it (timewait.py explains the setup). One connection, without
timestamps, each step one crafted segment:
  badack      the handshake's ACK, acknowledging ISS+12346 instead of ISS+1
  baddata     "evil" with that same acknowledgment
  ack         the right ACK, with "hello": the handshake completes
  unsent      "EVIL" acknowledging 100000 bytes tcpd never sent
  unsent2     the same again at once
  data        "world" with the right acknowledgment
  tooold      "EVIL" acknowledging 2,000,000,000 bytes below what it has
              acknowledged already, far more than its window (RFC 5961 5.2)
then a RST ends the connection. The destination must read exactly
"helloworld".

Prints one JSON object: tcpd's ISS and, per step, every packet tcpd sent
back within --window seconds, as hex. The Go test judges them.
"""

import argparse
import json
import time

from scapy.all import IP, TCP, AsyncSniffer, Ether, IPv6, Raw, conf, sendp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iface", required=True)
    ap.add_argument("--dst-mac", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sport", type=int, default=42000)
    ap.add_argument("--window", type=float, default=0.3)
    args = ap.parse_args()
    conf.verb = 0
    ipl = IPv6 if ":" in args.dst else IP

    def from_tcpd(p):
        return ipl in p and TCP in p and p[ipl].src == args.dst and p[ipl].dst == args.src and p[TCP].dport == args.sport

    got = []
    sniff = AsyncSniffer(iface=args.iface, lfilter=from_tcpd, store=False, prn=lambda p: got.append(bytes(p[ipl])))
    sniff.start()
    time.sleep(0.5)
    seen = [0]

    def seg(flags, seq, ack, payload=b""):
        p = ipl(src=args.src, dst=args.dst) / TCP(sport=args.sport, dport=args.port, flags=flags, seq=seq, ack=ack, window=64240)
        if payload:
            p = p / Raw(payload)
        sendp(Ether(dst=args.dst_mac) / p, iface=args.iface)

    def replies(wait):
        time.sleep(wait)
        n = len(got)
        out = got[seen[0] : n]
        seen[0] = n
        return out

    iss = 700000
    seg("S", iss, 0)
    deadline = time.monotonic() + 5
    synack = None
    while synack is None and time.monotonic() < deadline:
        for raw in replies(0.05):
            tcp = ipl(raw)[TCP]
            if tcp.flags.S and tcp.flags.A:
                synack = tcp
    if synack is None:
        raise SystemExit("no SYN-ACK from tcpd")
    tiss = synack.seq
    report = {"iss": tiss, "steps": []}

    def step(name, flags, seq, ack, payload=b""):
        seg(flags, seq, ack, payload)
        report["steps"].append({"name": name, "replies": [raw.hex() for raw in replies(args.window)]})

    step("badack", "A", iss + 1, tiss + 12346)
    step("baddata", "PA", iss + 1, tiss + 12346, b"evil")
    step("ack", "PA", iss + 1, tiss + 1, b"hello")
    step("unsent", "PA", iss + 6, tiss + 1 + 100000, b"EVIL")
    step("unsent2", "PA", iss + 6, tiss + 1 + 100000, b"EVIL")
    step("data", "PA", iss + 6, tiss + 1, b"world")
    time.sleep(0.3)  # past the half second since the last answered ACK
    step("tooold", "PA", iss + 11, (tiss + 1 - 2000000000) % (1 << 32), b"EVIL")
    seg("R", iss + 11, 0)
    time.sleep(0.2)
    sniff.stop()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
