"""Forward a Unix socket on the test host to a TCP port inside a container's network namespace.

    nsenter --net=/run/netns/NS python3 netns_forward.py SOCKET HOST PORT

Run inside the namespace (``nsenter --net`` changes only the network namespace, so the Unix socket
is still a path of the host): the test's HTTP client reaches the desk, which listens on the
container's own 127.0.0.1, through SOCKET.
"""

from __future__ import annotations

import asyncio
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def main(path: str, host: str, port: int) -> None:
    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    server = await asyncio.start_unix_server(forward, path)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
