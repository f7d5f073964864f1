#!/usr/bin/env python3
"""A TCP proxy that delays every byte by a fixed time in each direction.

ops/dr-drill puts it between two regions on one machine to emulate a
wide-area link where tc netem is not available. Usage:

    wan-delay-proxy.py DELAY_MS LISTEN_PORT:HOST:PORT [...]

Listens on 127.0.0.1:LISTEN_PORT for each mapping, prints "ready" once every
port listens, and runs until SIGTERM. Bytes keep their order: each chunk is
written DELAY_MS after it was read, not DELAY_MS after the previous chunk
(a link's latency, not a throttle).
"""
import asyncio
import signal
import sys


async def pump(reader, writer, delay):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def send():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    sender = asyncio.ensure_future(send())
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + delay, data or None))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
    finally:
        writer.close()


def handler(host, port, delay):
    async def handle(c_reader, c_writer):
        try:
            s_reader, s_writer = await asyncio.open_connection(host, port)
        except OSError:
            # The far side is down (a destroyed region): the caller sees a
            # closed connection, as it would through a real link.
            c_writer.close()
            return
        await asyncio.gather(pump(c_reader, s_writer, delay),
                             pump(s_reader, c_writer, delay),
                             return_exceptions=True)
    return handle


async def main():
    if len(sys.argv) < 3:
        sys.exit("usage: wan-delay-proxy.py DELAY_MS LISTEN_PORT:HOST:PORT [...]")
    delay = int(sys.argv[1]) / 1000.0
    servers = []
    for spec in sys.argv[2:]:
        listen, host, port = spec.split(":")
        servers.append(await asyncio.start_server(handler(host, int(port), delay),
                                                  "127.0.0.1", int(listen)))
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


asyncio.run(main())
