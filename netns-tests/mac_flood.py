#!/usr/bin/python3
"""mac_flood.py IFACE COUNT DST_MAC - send COUNT Ethernet frames out of IFACE (an AF_PACKET
socket), each from a different random locally administered unicast source MAC, to DST_MAC.
Frames are 60 bytes, ethertype 0x88b5 (IEEE local experimental: no stack parses it). Prints
"sent N frames in S s (R frames/s)". Sources are drawn without repetition from 2^40 values, so
COUNT frames carry COUNT distinct MACs (checked with a set for COUNT <= 2M)."""
import os
import socket
import sys
import time

iface, count, dst = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3].replace(":", ""))
tail = b"\x88\xb5" + bytes(46)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
send = s.send
seen = set()
sent = 0
t0 = time.monotonic()
while sent < count:
    n = min(4096, count - sent)
    rnd = os.urandom(5 * n)
    for i in range(n):
        mac = b"\x02" + rnd[5 * i:5 * i + 5]
        if mac in seen:
            continue
        seen.add(mac)
        while True:
            try:
                send(dst + mac + tail)
                break
            except BlockingIOError:
                time.sleep(0.0005)
            except OSError as e:  # ENOBUFS: the device queue is full, retry shortly
                if e.errno != 105:
                    raise
                time.sleep(0.0005)
        sent += 1
dt = time.monotonic() - t0
print(f"sent {sent} frames in {dt:.1f} s ({sent / dt:.0f} frames/s), {len(seen)} distinct source MACs")
