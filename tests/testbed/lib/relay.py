#!/usr/bin/python3
"""Delaying TCP relay for testbed hosts (the kernel here has no netem).

Usage: relay.py --map LISTEN_ADDR:PORT=TARGET_ADDR:PORT:DELAY_MS [--map ...]

Runs inside a host's network namespace. For every accepted connection it opens
one to the target and copies bytes both ways. Each chunk read is queued with
its due time (read time + delay) and a per-direction writer sends it when it is
due, so the delay is a fixed one-way latency, byte order is preserved, and
throughput is not limited by the delay (several chunks are in flight at once).
EOF is forwarded (half-close) after the same delay. A direction holding more
than MAX_BUFFERED bytes stops reading until its writer catches up, so a slow
reader on one side back-pressures the other side as TCP would.
"""
import asyncio
import socket
import sys

MAX_BUFFERED = 4 * 1024 * 1024


async def pump(loop, reader, writer, delay):
    """Copy reader -> writer, each chunk delayed by `delay` seconds."""
    queue = asyncio.Queue()
    state = {"buffered": 0}
    room = asyncio.Event()
    room.set()

    async def read_side():
        try:
            while True:
                await room.wait()
                data = await reader.read(65536)
                queue.put_nowait((loop.time() + delay, data))
                if not data:
                    return
                state["buffered"] += len(data)
                if state["buffered"] > MAX_BUFFERED:
                    room.clear()
        except (ConnectionError, OSError):
            queue.put_nowait((loop.time() + delay, None))  # None = reset

    async def write_side():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                writer.transport.abort()
                return
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            state["buffered"] -= len(data)
            if state["buffered"] <= MAX_BUFFERED:
                room.set()

    rd = asyncio.ensure_future(read_side())
    try:
        await write_side()
    finally:
        rd.cancel()


async def handle(loop, c_reader, c_writer, target, delay):
    try:
        s_reader, s_writer = await asyncio.open_connection(target[0], target[1])
    except OSError:
        c_writer.transport.abort()
        return
    for w in (c_writer, s_writer):
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    up = asyncio.ensure_future(pump(loop, c_reader, s_writer, delay))
    down = asyncio.ensure_future(pump(loop, s_reader, c_writer, delay))
    try:
        # Both directions finish (EOF forwarded) or one fails: then close all.
        done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
        for t in pending:
            t.cancel()
    except Exception:
        pass
    finally:
        for w in (c_writer, s_writer):
            try:
                w.close()
            except Exception:
                pass


def parse_map(spec):
    listen, target = spec.split("=", 1)
    laddr, lport = listen.rsplit(":", 1)
    taddr, tport, delay = target.rsplit(":", 2)
    return (laddr, int(lport)), (taddr, int(tport)), int(delay) / 1000.0


async def main(maps):
    loop = asyncio.get_running_loop()
    servers = []
    for listen, target, delay in maps:
        def make_cb(target=target, delay=delay):
            return lambda r, w: handle(loop, r, w, target, delay)
        servers.append(await asyncio.start_server(make_cb(), listen[0], listen[1],
                                                  reuse_address=True, backlog=128))
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    args = sys.argv[1:]
    maps = []
    while args:
        if args[0] == "--map" and len(args) > 1:
            maps.append(parse_map(args[1]))
            args = args[2:]
        else:
            sys.exit("usage: relay.py --map LADDR:LPORT=TADDR:TPORT:DELAY_MS [...]")
    if not maps:
        sys.exit("relay.py: no --map given")
    asyncio.run(main(maps))
