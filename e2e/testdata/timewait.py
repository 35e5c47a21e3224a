#!/usr/bin/python3
"""Drives TIME_WAIT's duties on tcpd with crafted segments and records the replies.

Run inside the client namespace of a netlab lab (TestTimeWaitDuties does).
It plays a client at an address the client's kernel does not own (--src),
which the gateway reaches at a MAC address nobody has: the client's kernel
drops tcpd's packets to it unseen (they are for another host), so that it
answers nothing on the client's behalf, neither RST nor ICMP, and the script
sees them by sniffing the client's veth. The server behind tcpd writes one
byte and closes first on every connection, so that tcpd's end of each
connection goes through FIN-WAIT and into TIME_WAIT when the client closes.

Connections, in order, each from its own source port:
  A: closed into TIME_WAIT; its final ACK from tcpd is the reference.
  B: closed into TIME_WAIT too; with tcp.time_wait_limit 1 it overflows.
  A: the duties, one crafted segment each, replies recorded:
     fin       its FIN again, as if tcpd's final ACK had been lost
     olddup    an old duplicate: its first data segment again
     rst       an RST at RCV.NXT (TIME-WAIT assassination, RFC 1337)
     fin2      its FIN again, to show the RST changed nothing
     oldsyn    a SYN with an older sequence number and timestamp (RFC 6191),
               sent twice in a row: the first gets a challenge ACK, the
               second nothing (at most one such ACK per half second)
     newsyn    a SYN with a newer sequence number and timestamp (RFC 6191),
               which must open a new connection at once; it is then reset
  B: finb      its FIN again, with no TIME_WAIT held for it
  C: closed into TIME_WAIT after the reuse freed the one slot; then, after
     --expire seconds, finc: its FIN again, the record gone.

Prints one JSON object: per connection its ports and final ACK, and per step
what was sent and every packet tcpd sent back within --window seconds, as
hex, with arrival times in milliseconds after the connection's final ACK.
The Go test judges them.
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
    ap.add_argument("--sport", type=int, default=41000)
    ap.add_argument("--window", type=float, default=0.25)
    ap.add_argument("--expire", type=float, default=4.6)
    args = ap.parse_args()
    conf.verb = 0
    v6 = ":" in args.dst
    ipl = IPv6 if v6 else IP

    # A Python filter: compiling a BPF one needs tcpdump, which the
    # machine need not have.
    want_src, want_dst = args.dst, args.src

    def from_tcpd(p):
        return ipl in p and TCP in p and p[ipl].src == want_src and p[ipl].dst == want_dst

    got = []  # (arrival, raw IP bytes) of every packet from tcpd, in order
    sniff = AsyncSniffer(
        iface=args.iface, lfilter=from_tcpd, store=False, prn=lambda p: got.append((p.time, bytes(p[ipl])))
    )
    sniff.start()
    time.sleep(0.5)
    seen = [0]

    def collect(wait):
        """Returns tcpd's packets that arrived in the next `wait` seconds."""
        time.sleep(wait)
        n = len(got)
        out = got[seen[0] : n]
        seen[0] = n
        return out

    def wait_for(pred, timeout=5.0):
        """Takes tcpd's packets in order until pred accepts one; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if seen[0] == len(got):
                time.sleep(0.01)
                continue
            t, raw = got[seen[0]]
            seen[0] += 1
            if pred(ipl(raw)[TCP]):
                return t, raw
        raise SystemExit("timed out waiting for a segment from tcpd")

    t0 = time.monotonic()

    def tsval():
        return 1000000 + int((time.monotonic() - t0) * 1000)

    def seg(sport, flags, seq, ack, tsecr, payload=b"", tsv=None, syn=False):
        if syn:
            opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (tsv or tsval(), 0)), ("NOP", None), ("WScale", 7)]
        else:
            opts = [("NOP", None), ("NOP", None), ("Timestamp", (tsv or tsval(), tsecr))]
        p = ipl(src=args.src, dst=args.dst) / TCP(
            sport=sport, dport=args.port, flags=flags, seq=seq, ack=ack, window=64240, options=opts
        )
        if payload:
            p = p / Raw(payload)
        return p

    def send(p):
        sendp(Ether(dst=args.dst_mac) / p, iface=args.iface)
        return p

    def ts_of(tcp):
        for k, v in tcp.options:
            if k == "Timestamp":
                return v[0]
        return 0

    report = {"conns": {}, "steps": [], "others": []}

    def close_into_time_wait(name, sport, iss):
        """Opens a connection, takes the server's byte and FIN, closes; returns its state."""
        syn = send(seg(sport, "S", iss, 0, 0, syn=True))
        t, raw = wait_for(lambda tcp: tcp.dport == sport and tcp.flags.S and tcp.flags.A)
        sa = ipl(raw)[TCP]
        rcv = sa.seq + 1
        tsr = ts_of(sa)
        send(seg(sport, "A", iss + 1, rcv, tsr))
        # The client's request, one byte: the server answers "x" and closes.
        first = seg(sport, "PA", iss + 1, rcv, tsr, payload=b"q")
        send(first)
        data_seen, fin_seen = False, False
        while not (data_seen and fin_seen):
            t, raw = wait_for(lambda tcp: tcp.dport == sport)
            tcp = ipl(raw)[TCP]
            tsr = ts_of(tcp)
            n = len(bytes(tcp.payload))
            if n:
                data_seen = True
                rcv = tcp.seq + n
            if tcp.flags.F:
                fin_seen = True
                rcv = tcp.seq + n + 1
            send(seg(sport, "A", iss + 2, rcv, tsr))
        fin = send(seg(sport, "FA", iss + 2, rcv, tsr))
        t, raw = wait_for(lambda tcp: tcp.dport == sport and tcp.ack == iss + 3)
        c = {
            "sport": sport,
            "iss": iss,
            "rcv": rcv,
            "final_ack": raw.hex(),
            "final_at": t,
            "fin_tsval": ts_of(fin[TCP]),
            "first_hex": bytes(first).hex(),
        }
        report["conns"][name] = c
        return c

    def step(name, conn, p, wait=None, until=None):
        """Sends p (None: nothing; a list: each) and records what tcpd sends back to the
        connection's port within the window, or until a packet until
        accepts arrives."""
        time.sleep(0.05)
        sent_at = time.time()
        # p may be a list: its packets go back to back, and the first is
        # the one reported as sent.
        pkts = p if isinstance(p, list) else [] if p is None else [p]
        for q in pkts:
            send(q)
        sent = pkts[0] if pkts else None
        deadline = time.monotonic() + (args.window if wait is None else wait)
        replies = []
        while time.monotonic() < deadline:
            if seen[0] == len(got):
                time.sleep(0.005)
                continue
            t, raw = got[seen[0]]
            seen[0] += 1
            tcp = ipl(raw)[TCP]
            if tcp.dport != conn["sport"]:
                report["others"].append({"step": name, "hex": raw.hex()})
                continue
            replies.append((t, raw))
            if until is not None and until(tcp):
                break
        report["steps"].append(
            {
                "name": name,
                "sport": conn["sport"],
                "sent": bytes(sent).hex() if sent is not None else "",
                "sent_tsval": ts_of(sent[TCP]) if sent is not None else 0,
                "sent_ms": round((sent_at - conn["final_at"]) * 1000, 3),
                "replies": [
                    {"hex": raw.hex(), "ms": round((t - conn["final_at"]) * 1000, 3)} for t, raw in replies
                ],
            }
        )
        return replies

    a = close_into_time_wait("A", args.sport + 1, 100000)
    b = close_into_time_wait("B", args.sport + 2, 200000)
    # Nothing more may come from tcpd for either: no RST as B overflows.
    step("quiet", b, None, wait=0.5)

    fa = lambda c, tsv=None: seg(c["sport"], "FA", c["iss"] + 2, c["rcv"], 0, tsv=tsv)
    step("fin", a, fa(a))
    first = ipl(bytes.fromhex(a["first_hex"]))
    first[TCP].options = [("NOP", None), ("NOP", None), ("Timestamp", (tsval(), 0))]
    if v6:
        del first[IPv6].plen
    else:
        del first[IP].chksum
        del first[IP].len
    del first[TCP].chksum
    del first[TCP].dataofs
    step("olddup", a, ipl(bytes(first)))
    step("rst", a, ipl(src=args.src, dst=args.dst) / TCP(sport=a["sport"], dport=args.port, flags="R", seq=a["iss"] + 3))
    step("fin2", a, fa(a))
    oldsyn = seg(a["sport"], "S", a["iss"] - 50000, 0, 0, tsv=a["fin_tsval"] - 1, syn=True)
    step("oldsyn", a, [oldsyn, oldsyn])
    # The new connection is reset as soon as its SYN-ACK is in, so that it
    # sends nothing more.
    newiss = a["iss"] + 5000000
    replies = step(
        "newsyn", a, seg(a["sport"], "S", newiss, 0, 0, syn=True), wait=3.0, until=lambda tcp: tcp.flags.S and tcp.flags.A
    )
    if replies:
        send(ipl(src=args.src, dst=args.dst) / TCP(sport=a["sport"], dport=args.port, flags="R", seq=newiss + 1))
    step("finb", b, fa(b))

    c = close_into_time_wait("C", args.sport + 3, 300000)
    time.sleep(args.expire)
    step("finc", c, fa(c))
    sniff.stop()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
