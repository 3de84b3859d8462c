#!/usr/bin/env python3
"""A worker agent that takes connections and never confirms one.

    silent_agent.py APP:N

Run as the main process of sio-worker@APP:N.service (a drop-in's
ExecStart=), so the master admits it: it tells systemd it is ready, says
hello on the app's bus as agent N, says Ready, then receives every
connection handed to it (keeping the fds open) and answers nothing, as a
broken or hostile agent would. It exits when the master hangs up.
"""
import array
import os
import socket
import sys


def main():
    app, slot = sys.argv[1].rsplit(":", 1)
    notify = os.environ.get("NOTIFY_SOCKET", "")
    if notify:
        n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        n.sendto(b"READY=1", b"\0" + notify[1:].encode() if notify.startswith("@") else notify)
    bus = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bus.connect(f"/run/sio/{app}.bus")
    name = app.encode()
    hello = bytes([1]) + (3).to_bytes(2, "little") + bytes([1]) + len(name).to_bytes(4, "little") + name
    hello += int(slot).to_bytes(2, "little") + os.getpid().to_bytes(4, "little")
    ready = bytes([2])
    for body in (hello, ready):
        bus.sendall(len(body).to_bytes(4, "little") + body)
    held = []
    while True:
        fds = array.array("i")
        data, ancdata, _, _ = bus.recvmsg(65536, socket.CMSG_LEN(64 * fds.itemsize))
        if not data:
            return
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        held.extend(fds)
        print(f"holding {len(held)} connections", flush=True)


main()
