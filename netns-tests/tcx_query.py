#!/usr/bin/env python3
"""tcx_query.py DEV ingress|egress - print the BPF programs attached to DEV's TCX hook, one
per line as "PROG_ID LINK_ID" (nothing when none), asked of the kernel itself (BPF_PROG_QUERY),
whoever attached them: a program detached and attached again has a new link id. Run inside the device's network namespace, as root. (bpftool before 7.3 does not
list TCX attachments in `bpftool net show`.)"""
import ctypes
import os
import socket
import struct
import sys

SYS_BPF = 321  # x86_64
BPF_PROG_QUERY = 16
ATTACH = {"ingress": 46, "egress": 47}  # BPF_TCX_INGRESS, BPF_TCX_EGRESS


def main():
    if len(sys.argv) != 3 or sys.argv[2] not in ATTACH:
        sys.exit("usage: tcx_query.py DEV ingress|egress")
    ifindex = socket.if_nametoindex(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ids = (ctypes.c_uint32 * 64)()
    links = (ctypes.c_uint32 * 64)()
    attr = ctypes.create_string_buffer(64)
    # target_ifindex, attach_type, query_flags, attach_flags, prog_ids, prog_cnt
    struct.pack_into("IIIIQI", attr, 0, ifindex, ATTACH[sys.argv[2]], 0, 0, ctypes.addressof(ids), 64)
    struct.pack_into("Q", attr, 40, ctypes.addressof(links))  # link_ids
    if libc.syscall(SYS_BPF, BPF_PROG_QUERY, attr, ctypes.c_uint(64)) != 0:
        err = ctypes.get_errno()
        sys.exit(f"BPF_PROG_QUERY on {sys.argv[1]}: {os.strerror(err)}")
    (count,) = struct.unpack_from("I", attr, 24)
    for i in range(count):
        print(ids[i], links[i])


if __name__ == "__main__":
    main()
