"""A TCP proxy to PostgreSQL that, once armed (SIGUSR1), holds the server's
stream to the writer's connection (its startup packet names the role
``writer``) for a while right after the next CommandComplete: the statement's
result is in, its ReadyForQuery is not. A process of its own, so that it runs
on even while the process under test is stuck in a blocking call holding the
GIL. ``python hold_proxy.py TARGET_PORT HOLD_SECONDS`` prints its port."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import struct
import sys


class HoldingProxy:
    def __init__(self, target_port: int, hold: float) -> None:
        self.target_port = target_port
        self.hold = hold
        self.armed = False

    async def connection(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        head = await client_r.readexactly(4)  # the startup packet: its length, then it
        body = await client_r.readexactly(struct.unpack("!I", head)[0] - 4)
        writer = b":writer" in body
        server_w.write(head + body)

        async def up() -> None:
            while data := await client_r.read(65536):
                server_w.write(data)
            server_w.close()

        async def down() -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    kind = await server_r.readexactly(1)
                    size = await server_r.readexactly(4)
                    rest = await server_r.readexactly(struct.unpack("!I", size)[0] - 4)
                    client_w.write(kind + size + rest)
                    await client_w.drain()
                    if writer and kind == b"C" and self.armed:
                        self.armed = False
                        await asyncio.sleep(self.hold)
            client_w.close()

        await asyncio.gather(up(), down(), return_exceptions=True)


async def main(target_port: int, hold: float) -> None:
    proxy = HoldingProxy(target_port, hold)
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGUSR1, lambda: setattr(proxy, "armed", True)
    )
    server = await asyncio.start_server(proxy.connection, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
