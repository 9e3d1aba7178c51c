#!/usr/bin/python3
"""QEMU `-netdev stream` clients for the overlayd labs (4-byte big-endian length + frame).

Usage:
  qemu_stream.py connect SOCKET            connect, send one frame, exit 0 (permission checks)
  qemu_stream.py local-switching SOCKET DAEMON_LOG
                                           the scenario of netns-tests/55-vm-socket-ports.sh
                                           (DAEMON_LOG: the log of the daemon serving SOCKET)
  qemu_stream.py pmtu SOCKET MTU           the scenario of netns-tests/66-pmtu-signals.sh: frames
                                           over MTU are answered with ICMP / ICMPv6 (bytes checked)
  qemu_stream.py pmtu-dgram SOCKET MTU LOCAL
                                           the same ICMP answer on a datagram socket (-netdev dgram),
                                           the client bound at LOCAL

The local-switching scenario prints one "ok: ..." line per check and "info: ..." lines for
measurements; it exits 1 with "FAIL: ..." on the first check that does not hold. Inner
EtherTypes mark the phases so the lab can count them in an underlay capture:
  0x7a07  one broadcast from A (must reach B and go to the peer once)
  0x7a05  unicast between A and B (must never reach the underlay)
  0x7a06  unicast from A to B's MAC after B disconnected (B's MAC was flushed: flooded)
"""
import socket
import struct
import sys
import threading
import time

MAC_A = bytes.fromhex("02000000000a")
MAC_B = bytes.fromhex("02000000000b")
BCAST = b"\xff" * 6


def frame(dst, src, etype, payload):
    return dst + src + struct.pack("!H", etype) + payload


class Client:
    def __init__(self, path, name):
        self.name = name
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.buf = b""

    def send(self, f):
        self.s.sendall(struct.pack("!I", len(f)) + f)

    def recv(self, timeout=3.0):
        """Next frame, or None on timeout; raises EOFError when the daemon closed."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack("!I", self.buf[:4])[0]
                if len(self.buf) >= 4 + n:
                    f, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    return f
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.s.settimeout(left)
            try:
                chunk = self.s.recv(1 << 20)
            except socket.timeout:
                return None
            if not chunk:
                raise EOFError(self.name)
            self.buf += chunk

    def recv_etype(self, etype, timeout=3.0):
        """Next frame of EtherType etype (others, e.g. IPv6 noise, are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.recv(max(0.0, deadline - time.monotonic()))
            if f is None or struct.unpack("!H", f[12:14])[0] == etype:
                return f

    def close(self):
        self.s.close()


def ok(msg):
    print(f"ok: {msg}", flush=True)


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def expect(cond, msg):
    if not cond:
        fail(msg)
    ok(msg)


def check(cond, msg):
    """Fail with msg unless cond (silent when it holds)."""
    if not cond:
        fail(msg)


def flushes(log):
    """Lines of the daemon log saying a VM port left and took MACs with it."""
    with open(log, errors="replace") as f:
        return sum(1 for line in f if "vm disconnected" in line and "flushed_macs=1" in line)


def local_switching(path, log):
    a, b = Client(path, "A"), Client(path, "B")
    # both ports are in the switch before the first counted flood: B floods a sync frame
    # (EtherType 0x7a09, not counted by the lab) until A receives one
    sync = frame(BCAST, MAC_B, 0x7A09, b"sync".ljust(46, b"."))
    for _ in range(50):
        b.send(sync)
        if a.recv_etype(0x7A09, timeout=0.2) is not None:
            break
    else:
        fail("A never received B's broadcast: the two VM ports were not both switched within 10 s")

    hello = frame(BCAST, MAC_A, 0x7A07, b"hello from A".ljust(46, b"."))
    a.send(hello)
    expect(b.recv_etype(0x7A07) == hello, "a broadcast from VM port A reaches VM port B unchanged")

    # B answers: both MACs are now learned on their ports
    b.send(frame(MAC_A, MAC_B, 0x7A05, b"reply".ljust(46, b".")))
    got = a.recv_etype(0x7A05)
    expect(got is not None and got[6:12] == MAC_B, "B's unicast reply reaches A")

    for i in range(20):
        a.send(frame(MAC_B, MAC_A, 0x7A05, struct.pack("!I", i) + b"x" * 100))
    seq = []
    for _ in range(20):
        f = b.recv_etype(0x7A05)
        if f is None:
            break
        seq.append(struct.unpack("!I", f[14:18])[0])
    expect(seq == list(range(20)), "20 unicast frames A->B arrive complete and in order")

    short = frame(MAC_B, MAC_A, 0x7A05, b"\x01" * 28)  # 42 bytes, like an ARP request
    a.send(short)
    f = b.recv_etype(0x7A05)
    expect(f == short, "a 42-byte frame arrives as 42 bytes (no padding either way)")

    # one frame written in pieces: the header split, then the body in two parts
    split = frame(MAC_B, MAC_A, 0x7A05, bytes(range(256)) * 4)
    wire = struct.pack("!I", len(split)) + split
    for part in (wire[:2], wire[2:7], wire[7:500], wire[500:]):
        a.s.sendall(part)
        time.sleep(0.05)
    expect(b.recv_etype(0x7A05) == split, "a frame written in four pieces (length prefix split too) arrives whole")

    # a client that is not QEMU: disconnected, and nobody else notices
    c = Client(path, "C")
    c.s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        while c.recv(3.0) is not None:
            pass
        fail("a client sending garbage was not disconnected within 3 s")
    except EOFError:
        ok("a client sending garbage (length 0x47455420) is disconnected")
    except ConnectionResetError:
        ok("a client sending garbage is disconnected (reset)")
    c.close()
    z = Client(path, "Z")
    z.s.sendall(struct.pack("!I", 0))
    try:
        while z.recv(3.0) is not None:
            pass
        fail("a client sending a zero length was not disconnected")
    except (EOFError, ConnectionResetError):
        ok("a client sending a zero frame length is disconnected")
    z.close()
    a.send(frame(MAC_B, MAC_A, 0x7A05, b"still there?".ljust(46, b".")))
    b.send(frame(MAC_A, MAC_B, 0x7A05, b"yes".ljust(46, b".")))
    expect(b.recv_etype(0x7A05) is not None and a.recv_etype(0x7A05) is not None,
           "A and B still exchange frames after the bad clients were thrown out")

    # local switching rate: A sends, B counts (never asserted: this is a shared machine)
    n, size = 50000, 1400
    payload = frame(MAC_B, MAC_A, 0x7A05, b"r" * (size - 14))
    msg = struct.pack("!I", len(payload)) + payload
    got = [0]

    def reader():
        # count bytes, not parsed frames: python must not be the bottleneck being measured
        b.s.settimeout(1.0)
        total = 0
        while True:
            try:
                chunk = b.s.recv(1 << 20)
            except socket.timeout:
                break
            if not chunk:
                break
            total += len(chunk)
        got[0] = total // len(msg)

    t = threading.Thread(target=reader)
    t.start()
    t0 = time.monotonic()
    burst = msg * 64
    for _ in range(n // 64):
        a.s.sendall(burst)
    t.join()
    dt = time.monotonic() - t0 - 1.0  # the reader's final 1 s wait
    sent = (n // 64) * 64
    print(f"info: local switching A->B: {got[0]}/{sent} frames of {size} bytes in {max(dt, 0.001):.2f} s "
          f"= {got[0] * size * 8 / max(dt, 0.001) / 1e6:.0f} Mbit/s, {got[0] / max(dt, 0.001):.0f} frames/s "
          f"(python clients{'; the rest were dropped as port_busy' if got[0] < sent else ''})", flush=True)
    expect(got[0] > 0, "frames flowed A->B during the rate test")

    # B leaves: its MAC is flushed, so frames for it flood again (the lab sees them on the underlay)
    before = flushes(log)
    b.close()
    deadline = time.monotonic() + 15
    while flushes(log) == before:
        if time.monotonic() > deadline:
            fail("B's disconnect was not logged with flushed_macs=1 within 15 s")
        time.sleep(0.1)
    ok("B's disconnect flushed its MAC before A sends to it")
    for i in range(3):
        a.send(frame(MAC_B, MAC_A, 0x7A06, b"where is B".ljust(46, b".")))
    time.sleep(0.3)
    a.close()
    ok("scenario complete")


def csum(data):
    """RFC 1071 Internet checksum of data (0 when data holds a correct checksum field)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


VM4 = bytes([198, 51, 100, 11])
DST4 = bytes([198, 51, 100, 2])
VM6 = bytes.fromhex("20010db8000100000000000000000011")
DST6 = bytes.fromhex("20010db8000100000000000000000002")
NEXT_HOP = bytes.fromhex("02000000000c")


def ipv4_tcp(total, df):
    """An IPv4 packet of `total` bytes: TCP 40000 -> 5001 (SYN-less data), DF as given."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 5001, 0x01020304, 9, 5 << 4, 0x18, 64240, 0, 0)
    payload = bytes((i * 7) & 0xFF for i in range(total - 40))
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0x1234, 0x4000 if df else 0, 64, 6, 0, VM4, DST4)
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + tcp + payload


def ipv6_udp(total):
    """An IPv6 packet of `total` bytes: UDP 40000 -> 5001."""
    plen = total - 40
    udp = struct.pack("!HHHH", 40000, 5001, plen, 0) + bytes((i * 3) & 0xFF for i in range(plen - 8))
    return struct.pack("!IHBB16s16s", 6 << 28, plen, 17, 64, VM6, DST6) + udp


def check_frag_needed(r, pkt, mtu):
    """r is ICMP fragmentation needed for pkt (sent from MAC_A to NEXT_HOP), bytes checked."""
    check(r is not None, "no ICMP for a 1500-byte IPv4 packet with DF")
    check(r[0:6] == MAC_A and r[6:12] == NEXT_HOP, f"reply MACs dst {r[0:6].hex()} src {r[6:12].hex()}")
    ip = r[14:]
    ihl = (ip[0] & 15) * 4
    check(ip[0] == 0x45 and csum(ip[:20]) == 0, f"reply IP header or its checksum is wrong: {ip[:20].hex()}")
    total = struct.unpack("!H", ip[2:4])[0]
    check(total == len(ip) == 20 + 8 + 28, f"reply IP total length {total}, {len(ip)} bytes")
    check(ip[9] == 1 and ip[12:16] == DST4 and ip[16:20] == VM4, f"reply IP proto {ip[9]} src {ip[12:16].hex()} dst {ip[16:20].hex()}")
    icmp = ip[ihl:]
    typ, code, _, _, nh_mtu = struct.unpack("!BBHHH", icmp[:8])
    check((typ, code) == (3, 4), f"ICMP type {typ} code {code}, want 3/4")
    check(csum(icmp) == 0, "ICMP checksum wrong")
    check(nh_mtu == mtu, f"next-hop MTU {nh_mtu}, want {mtu}")
    check(icmp[8:] == pkt[:28], f"quote {icmp[8:].hex()} is not the packet's header + 8 bytes {pkt[:28].hex()}")
    ok(f"1500-byte IPv4 DF packet: ICMP 3/4 next-hop MTU {nh_mtu} from {'.'.join(map(str, ip[12:16]))}, "
       "quoting the IP header + 8 bytes, both checksums right, MACs swapped")



def pmtu_dgram(path, mtu, local):
    """The same answer on a datagram port (-netdev dgram): one frame per datagram."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(local)
    s.connect(path)
    pkt = ipv4_tcp(1500, True)
    s.send(frame(NEXT_HOP, MAC_A, 0x0800, pkt))
    s.settimeout(3.0)
    deadline = time.monotonic() + 3.0
    r = None
    while time.monotonic() < deadline:
        try:
            f = s.recv(65536)
        except socket.timeout:
            break
        if struct.unpack("!H", f[12:14])[0] == 0x0800:
            r = f
            break
    check_frag_needed(r, pkt, mtu)
    s.close()


def pmtu(path, mtu):
    """Frames over the MTU from a VM port come back as ICMP "fragmentation needed" (IPv4 DF)
    or ICMPv6 "packet too big", from the next hop's MAC, quoting the packet; nothing for IPv4
    without DF or for frames within the MTU."""
    c = Client(path, "vm")
    # frames within the MTU pass and get no answer (unknown unicast: flooded to the peer)
    c.send(frame(NEXT_HOP, MAC_A, 0x0800, ipv4_tcp(mtu, True)))
    check(c.recv_etype(0x0800, 1.0) is None, "an IPv4 packet of exactly the MTU got an answer")
    ok(f"an IPv4 packet of {mtu} bytes (the MTU) passes unanswered")

    pkt = ipv4_tcp(1500, True)
    c.send(frame(NEXT_HOP, MAC_A, 0x0800, pkt))
    check_frag_needed(c.recv_etype(0x0800, 3.0), pkt, mtu)
    c.send(frame(NEXT_HOP, MAC_A, 0x0800, ipv4_tcp(1500, False)))
    check(c.recv_etype(0x0800, 1.0) is None, "an IPv4 packet without DF got an answer")
    ok("1500-byte IPv4 packet without DF: no answer (dropped)")

    pkt6 = ipv6_udp(1500)
    c.send(frame(NEXT_HOP, MAC_A, 0x86DD, pkt6))
    r = c.recv_etype(0x86DD, 3.0)
    check(r is not None, "no ICMPv6 for a 1500-byte IPv6 packet")
    check(r[0:6] == MAC_A and r[6:12] == NEXT_HOP, "ICMPv6 reply MACs")
    ip6 = r[14:]
    plen = struct.unpack("!H", ip6[4:6])[0]
    check(len(ip6) == 1280 and plen == 1240, f"ICMPv6 reply is {len(ip6)} bytes (payload length {plen}), want 1280")
    check(ip6[6] == 58 and ip6[8:24] == DST6 and ip6[24:40] == VM6, "ICMPv6 reply next header / addresses")
    m = ip6[40:]
    pseudo = ip6[8:40] + struct.pack("!IxxxB", len(m), 58)
    check(csum(pseudo + m) == 0, "ICMPv6 checksum (with the pseudo-header) wrong")
    typ, code, _, v6mtu = struct.unpack("!BBHI", m[:8])
    check((typ, code, v6mtu) == (2, 0, mtu), f"ICMPv6 type {typ} code {code} mtu {v6mtu}")
    check(m[8:] == pkt6[:1232], "ICMPv6 quote is not the packet's first 1232 bytes")
    ok(f"1500-byte IPv6 packet: ICMPv6 packet too big, MTU {v6mtu}, 1280 bytes quoting the packet, checksum right")

    # rate limit: a burst of oversized frames gets a bounded number of answers
    n = 300
    c.s.sendall(b"".join(struct.pack("!I", 14 + 1500) + frame(NEXT_HOP, MAC_A, 0x0800, pkt) for _ in range(n)))
    got = 0
    while c.recv_etype(0x0800, 1.0) is not None:
        got += 1
    check(0 < got < n, f"{got} answers to {n} oversized frames sent at once: not rate-limited")
    print(f"info: {got} answers to a burst of {n} oversized frames", flush=True)
    print(f"limited: {n - got}", flush=True)
    ok(f"a burst of {n} oversized frames got {got} answers (rate-limited)")
    c.close()


def main():
    if len(sys.argv) not in (3, 4, 5):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "connect":
        c = Client(path, "probe")
        c.send(frame(BCAST, bytes.fromhex("02000000000c"), 0x7A08, b"probe".ljust(46, b".")))
        c.close()
        print("connected and sent a frame")
    elif mode == "local-switching" and len(sys.argv) == 4:
        local_switching(path, sys.argv[3])
    elif mode == "pmtu" and len(sys.argv) == 4:
        pmtu(path, int(sys.argv[3]))
    elif mode == "pmtu-dgram" and len(sys.argv) == 5:
        pmtu_dgram(path, int(sys.argv[3]), sys.argv[4])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
