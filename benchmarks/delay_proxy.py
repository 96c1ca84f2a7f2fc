"""A loopback TCP proxy that adds a fixed one-way delay, to benchmark round trips.

Every chunk read from one side is written to the other side ``--delay-ms`` after it arrived,
in order and unchanged. Delays are not serialised: a chunk that arrives while an earlier one
is still waiting leaves at its own arrival time plus the delay, as on a network link with that
latency (and no bandwidth limit). Each direction of each connection is delayed independently.

    python benchmarks/delay_proxy.py --listen-port 7001 --target-port 6379 --delay-ms 0.5

Prints ``listening on HOST:PORT`` (flushed) once it accepts connections; stops on SIGTERM or
SIGINT. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import selectors
import signal
import socket
import sys

CHUNK = 1 << 18


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def forward() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    sender = asyncio.create_task(forward())
    try:
        while True:
            try:
                data = await reader.read(CHUNK)
            except (ConnectionError, OSError):
                data = b""
            # Stamped at arrival; the sender waits until then + delay, so a backlog of chunks
            # is not delayed once per chunk.
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _serve(listen_host: str, listen_port: int, host: str, port: int, delay: float) -> None:
    links: set[asyncio.StreamWriter] = set()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(host, port, limit=CHUNK)
        except OSError:
            client_w.close()
            return
        for w in (client_w, server_w):
            links.add(w)
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(
                _pipe(client_r, server_w, delay),
                _pipe(server_r, client_w, delay),
                return_exceptions=True,
            )
        finally:
            links.discard(client_w)
            links.discard(server_w)

    server = await asyncio.start_server(handle, listen_host, listen_port, limit=CHUNK)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    async with server:
        await stop.wait()
        server.close()
        # Abort every link so that each connection's tasks end on their own (cancelling the
        # handler tasks instead makes asyncio print tracebacks), then let them finish.
        for w in links:
            w.transport.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen-port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument(
        "--delay-ms", type=float, default=0.5, help="added delay per direction (default 0.5)"
    )
    args = parser.parse_args(argv)
    if args.delay_ms < 0:
        parser.error("--delay-ms must not be negative")
    # select() takes microsecond timeouts; epoll and poll round a 0.5 ms sleep up to 1 ms.
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        loop.run_until_complete(
            _serve(
                args.listen_host,
                args.listen_port,
                args.target_host,
                args.target_port,
                args.delay_ms / 1000.0,
            )
        )
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
