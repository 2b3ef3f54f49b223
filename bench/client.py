"""A small asyncio HTTP/1.1 client with keep-alive, for the Python load loop and the
sign-in flow driver (wrk cannot follow a multi-step flow with cookies).

Only what the benchmarks need: one request at a time per connection, Content-Length or
chunked bodies, TLS (the proxy) with the group's CA, and an optional local source address
on 127.0.0.0/8 so that simulated browsers come from different loopback addresses.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Optional
from urllib.parse import urlsplit


class HTTPError(Exception):
    pass


class Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: list, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def header(self, name: str) -> Optional[str]:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def header_list(self, name: str) -> list:
        name = name.lower()
        return [v for k, v in self.headers if k == name]


def tls_context(ca: Optional[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    return ctx


class Connection:
    """One keep-alive connection to an origin (scheme://host:port)."""

    def __init__(self, origin: str, *, ca: Optional[str] = None, local_ip: Optional[str] = None,
                 timeout: float = 30.0) -> None:
        parts = urlsplit(origin)
        self.origin = origin
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = tls_context(ca) if parts.scheme == "https" else None
        self.host_header = parts.netloc
        self.local_ip = local_ip
        self.timeout = timeout
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None

    async def _open(self) -> None:
        kw = {}
        if self.tls is not None:
            kw["ssl"], kw["server_hostname"] = self.tls, self.host
        if self.local_ip:
            kw["local_addr"] = (self.local_ip, 0)
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, **kw)

    def close(self) -> None:
        # abort: no TLS close_notify round trip that an ending event loop would not wait
        # for (the socket would be left open and collected later)
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = None

    async def aclose(self) -> None:
        """close() and wait until the socket is closed: at the end of an `asyncio.run`, a
        close only scheduled on the loop would leave the socket open (a ResourceWarning)."""
        writer = self.writer
        self.close()
        if writer is not None:
            try:
                await asyncio.wait_for(writer.wait_closed(), 5)
            except (OSError, asyncio.TimeoutError, ssl.SSLError):
                pass

    async def request(self, method: str, target: str, headers: Optional[dict] = None,
                      body: bytes = b"") -> Response:
        return await asyncio.wait_for(self._request(method, target, headers or {}, body),
                                      self.timeout)

    async def _request(self, method: str, target: str, headers: dict, body: bytes) -> Response:
        if self.writer is None:
            await self._open()
        lines = [f"{method} {target} HTTP/1.1", f"Host: {headers.pop('Host', self.host_header)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.writer.write(head + body)
        try:
            return await self._read(method)
        except (asyncio.IncompleteReadError, ConnectionError) as err:
            self.close()
            raise HTTPError(f"connection lost: {err!r}") from None

    async def _read(self, method: str) -> Response:
        reader = self.reader
        status_line = await reader.readuntil(b"\r\n")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            self.close()
            raise HTTPError(f"bad status line {status_line[:80]!r}")
        status = int(parts[1])
        headers = []
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        hmap = {k: v for k, v in headers}
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "content-length" in hmap:
            body = await reader.readexactly(int(hmap["content-length"]))
        elif hmap.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(chunks)
        else:
            body = await reader.read()
            self.close()
        if hmap.get("connection", "").lower() == "close":
            self.close()
        return Response(status, headers, body)
