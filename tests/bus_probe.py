#!/usr/bin/env python3
"""Hostile local peers of one of an app's Unix sockets (APP.bus, APP.control).

    bus_probe.py PATH MODE COUNT [HOLD_MS]

MODE: close (connect, hang up), garbage (64 bytes of 0xff), truncated (half
a hello), huge (an operator hello, then a frame header announcing 256 MiB
and 4 KiB of it, held open for HOLD_MS). Prints "RESULT {json}": how many
connected, and how many the master closed on its side (or, mode
"connect", how many of COUNT connections the master kept open: it caps
those of a uid other than its own and root's).
"""
import json
import socket
import sys
import time

CONTROL_HELLO = bytes([4, 0, 0, 0, 1, 1, 0, 2])
HUGE = bytes([0, 0, 0, 0x10, 9]) + b"{" * 4096


def main():
    address, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    hold = int(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0
    connected, closed_by_master, held = 0, 0, []
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(address)
        except OSError:
            s.close()
            continue
        connected += 1
        if mode == "close":
            s.close()
        elif mode == "garbage":
            s.sendall(b"\xff" * 64)
            s.close()
        elif mode == "truncated":
            s.sendall(CONTROL_HELLO[:5])
            s.close()
        elif mode == "connect":
            held.append(s)
        elif mode == "huge":
            s.sendall(CONTROL_HELLO + HUGE)
            held.append(s)
        else:
            raise SystemExit(f"unknown mode {mode}")
    if held and mode == "connect":
        time.sleep(hold)
        kept = 0
        for s in held:
            s.setblocking(False)
            try:
                if s.recv(1) != b"":  # b"": the master hung up
                    kept += 1
            except BlockingIOError:  # nothing to read: still open
                kept += 1
            except OSError:
                pass
            s.close()
        print("RESULT " + json.dumps({"connected": connected, "kept": kept}))
        return
    if held:
        time.sleep(hold)
        for s in held:
            s.settimeout(0.5)
            try:
                # The welcome may come first; then the end of the stream.
                while s.recv(65536):
                    pass
                closed_by_master += 1
            except OSError:
                pass
            s.close()
    print("RESULT " + json.dumps({"connected": connected, "closedByMaster": closed_by_master}))


main()
