"""Every request to an upstream (shared/authorities/fetch.py) has a deadline and a size cap
and follows no redirect: against a loopback HTTP server of the test's own that answers too
much, too slowly, with a redirect or with something that is not JSON."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from shared.authorities import fetch as fetching
from shared.authorities.fetch import UpstreamError, fetch, fetch_json


class Misbehaving:
    """A one-thread HTTP/1.1 server on 127.0.0.1 whose answer per path is given."""

    ANSWERS = {
        "/big": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n",
        "/redirect": b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/x\r\nContent-Length: 0\r\n\r\n",
        "/html": b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 6\r\n\r\n<html>",
        "/list": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]",
        "/ok": b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{"a": 1}',
        "/error": b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
    }

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stop = False
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn: socket.socket) -> None:
        with conn:
            request = conn.recv(4096).decode("latin-1")
            path = request.split(" ")[1] if " " in request else "/"
            if path == "/slow":  # headers, then nothing until the client gives up
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
                time.sleep(60)
                return
            if path == "/big":
                size = 2 * fetching.MAX_BODY
                conn.sendall(self.ANSWERS[path] % size)
                try:
                    conn.sendall(b" " * size)
                except OSError:
                    pass
                return
            conn.sendall(self.ANSWERS.get(path, self.ANSWERS["/error"]))

    def close(self) -> None:
        self.stop = True
        self.sock.close()


@pytest.fixture
def server():
    s = Misbehaving()
    yield s
    s.close()


@pytest.mark.gen_test(timeout=20)
async def test_a_good_answer_is_read(server):
    assert await fetch_json(server.url + "/ok") == (200, {"a": 1})


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("path, words", [
    ("/big", ""), ("/redirect", "HTTP 302"), ("/error", "HTTP 500"),
])
async def test_too_large_redirected_or_failed_answers_are_upstream_errors(server, path, words):
    with pytest.raises(UpstreamError) as err:
        await fetch(server.url + path)
    assert words in str(err.value)


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("path", ["/html", "/list"])
async def test_answers_that_are_no_json_object_are_upstream_errors(server, path):
    with pytest.raises(UpstreamError):
        await fetch_json(server.url + path)


@pytest.mark.gen_test(timeout=20)
async def test_a_trickling_upstream_meets_the_deadline(server, monkeypatch):
    """The server sends a minute of nothing: only the request's own deadline (shortened
    here) ends the wait before the test's timeout would."""
    monkeypatch.setattr(fetching, "TIMEOUT", 1.0)
    with pytest.raises(UpstreamError):
        await fetch(server.url + "/slow")


@pytest.mark.gen_test(timeout=20)
async def test_only_http_urls_are_fetched():
    for url in ("file:///etc/passwd", "gopher://127.0.0.1/", "ftp://127.0.0.1/"):
        with pytest.raises(UpstreamError):
            await fetch(url)
