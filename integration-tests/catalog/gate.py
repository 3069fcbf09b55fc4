"""A TCP gate in front of a test server, to take it away, bring it back, or lose its answers.

    python gate.py LISTEN_PORT TARGET_PORT      (both on 127.0.0.1; the standard library only)

Forwards every connection to LISTEN_PORT to TARGET_PORT. Signals change what it does:

- SIGUSR1 closes the gate: the listening socket goes away (new connections are refused, as if
  the server had stopped) and every open connection is reset.
- SIGUSR2 opens it again on the same port, forwarding everything.
- SIGHUP keeps it open but loses the replies to Iceberg REST commits: a request that starts
  with `POST /v1/.../namespaces/NS/tables/TABLE` (an update of a table, not a create) reaches
  the catalog, which commits it; once the catalog starts answering, both connections are reset
  instead of forwarding the answer. The client sees a dropped connection: a commit whose
  outcome it cannot know. Each lost reply is printed. SIGUSR2 ends this mode.
- SIGTERM ends the gate.

Each change is printed (`gate open`, `gate closed`, `gate loses commit replies`). The request
is recognised by the first bytes a client sends on a connection or after a full answer, which
is where HTTP/1.1 clients that do not pipeline (hyper, reqwest) start a request.

Why: moto keeps its objects in memory, so stopping it loses the lake; behind this gate the
object store can be "down" for 30 s and come back with every object it held. In front of the
REST catalog it makes the unknown-outcome commit real.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys

HOST = "127.0.0.1"
CHUNK = 256 * 1024
COMMIT = re.compile(rb"^POST /v1/(?:[^ ]*/)?namespaces/[^/ ]+/tables/[^/ ?]+(?:\?[^ ]*)? HTTP/1\.[01]\r\n")


class Gate:
    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.lose_commit_replies = False

    async def open(self) -> None:
        self.lose_commit_replies = False
        if self.server is not None:
            print("gate open", flush=True)
            return
        # While the gate was closed its port may have become the source port of an outgoing
        # connection on this machine; such a port frees up once that connection ends.
        for attempt in range(100):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, self.listen_port))
                break
            except OSError as error:
                sock.close()
                if attempt == 99:
                    raise
                print(f"gate cannot bind {HOST}:{self.listen_port} yet: {error}", flush=True)
                await asyncio.sleep(0.1)
        self.server = await asyncio.start_server(self.handle, sock=sock, backlog=256)
        print("gate open", flush=True)

    def close(self) -> None:
        self.lose_commit_replies = False
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            abort(writer)
        self.writers.clear()
        print("gate closed", flush=True)

    def lose_replies(self) -> None:
        self.lose_commit_replies = True
        print("gate loses commit replies", flush=True)

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            abort(client_writer)
            return
        pair = {client_writer, target_writer}
        self.writers |= pair
        # The request line of a commit whose reply is to be lost, or None.
        doomed: list[bytes | None] = [None]

        async def requests() -> None:
            try:
                while data := await client_reader.read(CHUNK):
                    if self.lose_commit_replies and doomed[0] is None and COMMIT.match(data):
                        doomed[0] = data.split(b"\r\n", 1)[0]
                    target_writer.write(data)
                    await target_writer.drain()
                if target_writer.can_write_eof():
                    target_writer.write_eof()
            except (ConnectionError, OSError):
                target_writer.transport.abort()

        async def replies() -> None:
            try:
                while data := await target_reader.read(CHUNK):
                    if doomed[0] is not None:
                        print(f"gate lost the reply to {doomed[0].decode(errors='replace')}", flush=True)
                        abort(client_writer)
                        abort(target_writer)
                        return
                    client_writer.write(data)
                    await client_writer.drain()
                if client_writer.can_write_eof():
                    client_writer.write_eof()
            except (ConnectionError, OSError):
                client_writer.transport.abort()

        try:
            await asyncio.gather(requests(), replies())
        finally:
            for writer in pair:
                self.writers.discard(writer)
                writer.close()


def abort(writer: asyncio.StreamWriter) -> None:
    """Resets the connection (RST), as a dying server's kernel would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
    writer.transport.abort()


async def main(listen_port: int, target_port: int) -> None:
    gate = Gate(listen_port, target_port)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, gate.close)
    loop.add_signal_handler(signal.SIGUSR2, lambda: asyncio.ensure_future(gate.open()))
    loop.add_signal_handler(signal.SIGHUP, gate.lose_replies)
    loop.add_signal_handler(signal.SIGTERM, done.set)
    loop.add_signal_handler(signal.SIGINT, done.set)
    await gate.open()
    await done.wait()
    gate.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: gate.py LISTEN_PORT TARGET_PORT")
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
