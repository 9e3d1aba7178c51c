#!/usr/bin/env python3
"""UDP datagrams whose every byte can be checked, for the labs.

  udp_stream.py send DST PORT COUNT SIZE BURST [gso]
      COUNT datagrams of SIZE bytes to DST:PORT, BURST at a time then 1 ms of pause; with
      "gso" each burst is one send with UDP_SEGMENT (UDP GSO: the stack hands the whole burst
      down as one super-packet).
  udp_stream.py recv PORT COUNT SIZE
      receive until COUNT datagrams came or none came for 3 s, and print
      "received R intact I bad B duplicate D".

Datagram n holds n (4 bytes, big-endian), then bytes of a fixed pattern starting at n % 251.
"""
import socket
import sys
import time

SOL_UDP = 17
UDP_SEGMENT = 103
SO_RCVBUFFORCE = 33
PATTERN = bytes((i * 7 + i // 13) & 0xFF for i in range(70000))


def payload(n, size):
    off = n % 251
    return n.to_bytes(4, "big") + PATTERN[off : off + size - 4]


def send(dst, port, count, size, burst, gso):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    if gso:
        s.setsockopt(SOL_UDP, UDP_SEGMENT, size)
    n = 0
    while n < count:
        k = min(burst, count - n)
        if gso:
            s.sendto(b"".join(payload(n + i, size) for i in range(k)), (dst, port))
        else:
            for i in range(k):
                s.sendto(payload(n + i, size), (dst, port))
        n += k
        time.sleep(0.001)


def recv(port, count, size):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
    s.bind(("0.0.0.0", port))
    s.settimeout(3)
    seen = set()
    received = intact = bad = dup = 0
    while received < count:
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        received += 1
        n = int.from_bytes(d[:4], "big") if len(d) >= 4 else -1
        if len(d) != size or n < 0 or n >= count or d != payload(n, size):
            bad += 1
        elif n in seen:
            dup += 1
        else:
            seen.add(n)
            intact += 1
    print(f"received {received} intact {intact} bad {bad} duplicate {dup}")


if __name__ == "__main__":
    a = sys.argv
    if a[1] == "send":
        send(a[2], int(a[3]), int(a[4]), int(a[5]), int(a[6]), len(a) > 7 and a[7] == "gso")
    else:
        recv(int(a[2]), int(a[3]), int(a[4]))
