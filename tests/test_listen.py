"""The listening socket mlxd binds itself, before loading the model."""

from __future__ import annotations

import asyncio
import socket

from mlxd.server.serve import listen


def test_accepted_connections_get_tcp_nodelay():
    """asyncio turns Nagle off only for sockets whose protocol says TCP; with it on, a response's first two
    small writes waited for a delayed ACK (~40 ms added to every time to first token)."""
    listener = listen("127.0.0.1", 0)
    port = listener.getsockname()[1]

    async def accepted_option() -> int:
        options: list[int] = []

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            options.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connection, sock=listener)
        async with server:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            for _ in range(100):
                if options:
                    break
                await asyncio.sleep(0.01)
            writer.close()
        return options[0]

    assert asyncio.run(accepted_option()) != 0
