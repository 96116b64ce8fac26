#!/usr/bin/env python3
"""Writes the seed corpus of the nat_frames target: well-formed guest frames
for each service of the NAT (ARP, DHCP, DNS, ICMP echo, TCP SYN to the
gateway and to a forward, UDP out, IPv4 options and fragments), so that
libFuzzer mutates frames that pass the checksums and reach the code behind
them. Each file is one input in the target's layout: repeated
[length (u16, big-endian), frame].

    python3 fuzz/make_seeds.py            # writes fuzz/seeds/nat_frames/
"""

import os
import struct

GUEST_MAC = bytes([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
GW_MAC = bytes([0x52, 0x55, 10, 0, 2, 2])
BCAST = b"\xff" * 6
GUEST = bytes([10, 0, 2, 15])
GW = bytes([10, 0, 2, 2])
DNS = bytes([10, 0, 2, 3])
OUTSIDE = bytes([192, 0, 2, 1])


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def eth(dst, ethertype, payload):
    return dst + GUEST_MAC + struct.pack("!H", ethertype) + payload


def ipv4(src, dst, proto, payload, ident=1, flags_frag=0x4000, options=b""):
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(payload), ident, flags_frag, 64, proto, 0, src, dst)
    hdr += options
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def l4_csum(src, dst, proto, segment):
    pseudo = src + dst + struct.pack("!BBH", 0, proto, len(segment))
    return csum(pseudo + segment)


def udp(src, dst, sport, dport, payload):
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = l4_csum(src, dst, 17, seg) or 0xFFFF
    return seg[:6] + struct.pack("!H", c) + seg[8:]


def tcp(src, dst, sport, dport, seq, ack, flags, payload=b"", options=b""):
    off = (20 + len(options)) // 4
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, off << 4, flags, 65535, 0, 0) + options + payload
    c = l4_csum(src, dst, 6, seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def icmp_echo(ident, seq, data=b"ping"):
    msg = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + data
    return msg[:2] + struct.pack("!H", csum(msg)) + msg[4:]


def arp_request(target):
    return eth(BCAST, 0x0806, struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, GUEST_MAC, GUEST, b"\0" * 6, target))


def dhcp(msg_type, requested=None):
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x1234, 0, 0x8000, b"\0" * 4, b"\0" * 4, b"\0" * 4,
                        b"\0" * 4, GUEST_MAC + b"\0" * 10, b"\0" * 64, b"\0" * 128)
    opts = b"\x63\x82\x53\x63" + bytes([53, 1, msg_type])
    if requested:
        opts += bytes([50, 4]) + requested + bytes([54, 4]) + GW
    opts += bytes([55, 4, 1, 3, 6, 26, 12, 4]) + b"seed" + b"\xff"
    payload = bootp + opts
    return eth(BCAST, 0x0800, ipv4(b"\0" * 4, b"\xff" * 4, 17, udp(b"\0" * 4, b"\xff" * 4, 68, 67, payload)))


def dns_query(name):
    q = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack("!HH", 1, 1)
    return eth(GW_MAC, 0x0800, ipv4(GUEST, DNS, 17, udp(GUEST, DNS, 40000, 53, q)))


def frames(*fs):
    return b"".join(struct.pack("!H", len(f)) + f for f in fs)


MSS = b"\x02\x04\x05\xb4"
SEEDS = {
    "arp": frames(arp_request(GW), arp_request(DNS), arp_request(bytes([10, 0, 2, 99]))),
    "dhcp": frames(dhcp(1), dhcp(3, GUEST)),
    "dns": frames(dns_query("example.com"), dns_query("a.b.c.d.example")),
    "icmp_gateway": frames(eth(GW_MAC, 0x0800, ipv4(GUEST, GW, 1, icmp_echo(7, 1)))),
    "icmp_outside": frames(eth(GW_MAC, 0x0800, ipv4(GUEST, OUTSIDE, 1, icmp_echo(8, 1)))),
    "tcp_gateway": frames(
        eth(GW_MAC, 0x0800, ipv4(GUEST, GW, 6, tcp(GUEST, GW, 40001, 80, 1000, 0, 0x02, options=MSS))),
        eth(GW_MAC, 0x0800, ipv4(GUEST, GW, 6, tcp(GUEST, GW, 40001, 80, 1001, 1, 0x10))),
        eth(GW_MAC, 0x0800, ipv4(GUEST, GW, 6, tcp(GUEST, GW, 40001, 80, 1001, 1, 0x18, b"GET / HTTP/1.0\r\n\r\n"))),
        eth(GW_MAC, 0x0800, ipv4(GUEST, GW, 6, tcp(GUEST, GW, 40001, 80, 1019, 1, 0x11))),
    ),
    "tcp_outside_rst": frames(
        eth(GW_MAC, 0x0800, ipv4(GUEST, OUTSIDE, 6, tcp(GUEST, OUTSIDE, 40002, 443, 5, 0, 0x02, options=MSS))),
        eth(GW_MAC, 0x0800, ipv4(GUEST, OUTSIDE, 6, tcp(GUEST, OUTSIDE, 40002, 443, 6, 0, 0x04))),
    ),
    "udp_outside": frames(eth(GW_MAC, 0x0800, ipv4(GUEST, OUTSIDE, 17, udp(GUEST, OUTSIDE, 40003, 9, b"x" * 64)))),
    "ip_options": frames(
        eth(GW_MAC, 0x0800, ipv4(GUEST, GW, 1, icmp_echo(9, 1), options=b"\x94\x04\x00\x00")),
    ),
    "fragments": frames(
        eth(GW_MAC, 0x0800, ipv4(GUEST, GW, 1, icmp_echo(10, 1, b"a" * 32)[:24], ident=77, flags_frag=0x2000)),
        eth(GW_MAC, 0x0800, ipv4(GUEST, GW, 1, icmp_echo(10, 1, b"a" * 32)[24:], ident=77, flags_frag=3)),
    ),
}


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "nat_frames")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds in {out}")


if __name__ == "__main__":
    main()
