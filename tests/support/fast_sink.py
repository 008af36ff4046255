"""A sink for throughput benchmarks: answers every POST with `200 {}` at once, in a process
of its own, and keeps only what a benchmark reads back (how many reports, their asset
keys, when the last one arrived).

The fault-test `Sink` parses each request with http.server, about 270 us of CPU per
request: in a burst it was slower than the agent it measured, on a machine with two
cores. This one reads HTTP/1.1 keep-alive requests with asyncio, about a tenth of that.

Run as `python -m tests.support.fast_sink`: it prints its URL, then for each line
`N` read on stdin prints one JSON line once N reports have arrived:
`{"count": ..., "keys": [...], "last": <time.time() of the last arrival>}`.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
REPO_ROOT = Path(__file__).resolve().parents[2]


class _Counter:
    def __init__(self) -> None:
        self.keys: list[str] = []
        self.last = 0.0
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []

    def arrived(self, body: bytes) -> None:
        self.last = time.time()
        try:
            self.keys.append("/".join(json.loads(body)["asset_key"]))
        except (ValueError, KeyError, TypeError):
            self.keys.append("")
        for count, future in self.waiters:
            if len(self.keys) >= count and not future.done():
                future.set_result(None)


class _Connection(asyncio.Protocol):
    def __init__(self, counter: _Counter) -> None:
        self.counter = counter
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.counter.arrived(body)
            self.transport.write(ANSWER)


async def _serve() -> None:
    counter = _Counter()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(counter), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        future: asyncio.Future[None] = loop.create_future()
        counter.waiters.append((int(line), future))
        if len(counter.keys) >= int(line):
            future.set_result(None)
        await future
        summary = {"count": len(counter.keys), "keys": counter.keys, "last": counter.last}
        print(json.dumps(summary), flush=True)
        counter.keys = []


class FastSink:
    """The sink process, from a test: `with FastSink() as sink: ... sink.wait_for(n)`."""

    def __enter__(self) -> FastSink:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fast_sink"],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
        assert self.proc.stdout is not None
        self.url = self._line(30.0).decode().strip()
        return self

    def wait_for(self, count: int, timeout: float) -> dict[str, Any]:
        """Once `count` reports have arrived since the last call: their keys and the
        arrival time of the last one. Counting starts again after each call."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{count}\n".encode())
        self.proc.stdin.flush()
        return dict(json.loads(self._line(timeout)))

    def _line(self, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the fast sink did not answer within {timeout}s")
        return self.proc.stdout.readline()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.proc.terminate()  # it may be waiting for reports that never came
        self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


if __name__ == "__main__":
    asyncio.run(_serve())
