#!/usr/bin/env python3
"""Hostile local peers of one of an app's Unix sockets (APP.bus, APP.control).

    bus_probe.py PATH MODE COUNT [HOLD_MS]

MODE: close (connect, hang up), garbage (64 bytes of 0xff), truncated (half
a hello), huge (an operator hello, then a frame header announcing 256 MiB
and 4 KiB of it, held open for HOLD_MS). Prints "RESULT {json}": how many
connected, and how many the master closed on its side (or, mode
"connect", how many of COUNT connections the master kept open: it caps
those of a uid other than its own and root's).

    bus_probe.py PATH agent SLOT APP

Says hello as the agent of worker SLOT of APP (PATH "@NAME" is an
abstract name) and prints "RESULT {json}": whether it connected, and the
master's answer ("welcome", "refused: REASON", or "closed").

    bus_probe.py PATH operator

Says hello as an operator (`sioctl`) and prints the answer, as above.

    bus_probe.py PATH unread COUNT SECONDS

An operator that sends COUNT status requests and reads no reply for
SECONDS, then prints how many bytes it could send before the master
stopped reading.
"""
import json
import socket
import sys
import time

CONTROL_HELLO = bytes([4, 0, 0, 0, 1, 1, 0, 2])
HUGE = bytes([0, 0, 0, 0x10, 9]) + b"{" * 4096


def agent(address, slot, app):
    name = app.encode()
    body = bytes([1]) + (3).to_bytes(2, "little") + bytes([1]) + len(name).to_bytes(4, "little") + name
    body += slot.to_bytes(2, "little") + (0).to_bytes(4, "little")
    hello(address, len(body).to_bytes(4, "little") + body)


def hello(address, frame):
    """Says `frame` and prints the master's answer."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(b"\0" + address[1:].encode() if address.startswith("@") else address)
    except OSError as e:
        print("RESULT " + json.dumps({"connected": False, "error": e.strerror}))
        return
    s.sendall(frame)
    s.settimeout(10)
    data = b""
    try:
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "little"):
            more = s.recv(65536)
            if not more:
                break
            data += more
    except OSError:
        pass
    reply = "closed"
    if len(data) >= 5 and data[4] == 1:
        reply = "welcome"
    elif len(data) >= 9 and data[4] == 2:
        reply = "refused: " + data[9 : 9 + int.from_bytes(data[5:9], "little")].decode()
    print("RESULT " + json.dumps({"connected": True, "reply": reply}))


def unread(address, count, seconds):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(address)
    request = b'\x09{"cmd":"status"}'
    frame = len(request).to_bytes(4, "little") + request
    s.setblocking(False)
    sent = 0
    pending = CONTROL_HELLO + frame * count
    deadline = time.time() + seconds
    while time.time() < deadline and sent < len(pending):
        try:
            sent += s.send(pending[sent : sent + 65536])
        except BlockingIOError:
            time.sleep(0.05)
    print("RESULT " + json.dumps({"sent": sent, "all": len(pending)}))


def main():
    if sys.argv[2] == "agent":
        return agent(sys.argv[1], int(sys.argv[3]), sys.argv[4])
    if sys.argv[2] == "operator":
        return hello(sys.argv[1], CONTROL_HELLO)
    if sys.argv[2] == "unread":
        return unread(sys.argv[1], int(sys.argv[3]), float(sys.argv[4]))
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
