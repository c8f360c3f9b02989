"""ssh's ProxyCommand through a tor SOCKS port: ``socks_connect.py SOCKS_PORT HOST PORT``.

A SOCKS5 CONNECT by name (tor resolves .onion itself), then stdin/stdout piped to the stream.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import sys


def connect(socks_port: int, host: str, port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", socks_port), timeout=120)
    s.sendall(b"\x05\x01\x00")
    if s.recv(2) != b"\x05\x00":
        raise SystemExit("socks: no method accepted")
    name = host.encode()
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port))
    reply = s.recv(10)
    if len(reply) < 2 or reply[1] != 0:
        raise SystemExit(f"socks: connect refused ({reply[1] if len(reply) > 1 else '?'})")
    s.settimeout(None)
    return s


def main() -> None:
    sock = connect(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ)
    sel.register(sock, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is sock:
                data = sock.recv(65536)
                if not data:
                    return
                os.write(sys.stdout.fileno(), data)
            else:
                data = os.read(sys.stdin.fileno(), 65536)
                if not data:
                    sock.shutdown(socket.SHUT_WR)
                    sel.unregister(sys.stdin.fileno())
                else:
                    sock.sendall(data)


if __name__ == "__main__":
    main()
