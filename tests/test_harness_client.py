"""The benchmarks' load generator reads HTTP/1.1 responses whole however they arrive: split
byte by byte, chunked with sizes cut mid-line, ended by the server closing, several on one
connection, and a connection lost mid-body is an error, not a short answer."""

from __future__ import annotations

import asyncio
import time

import pytest

from benchmarks.harness.client import HttpConnection

REQUEST = b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"


async def serve(answers: list[tuple[list[bytes], bool]]):
    """A server answering each request it reads with the next (pieces, close after) entry,
    writing the pieces one by one with a pause between them."""
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            requests.append(head + await reader.readexactly(length))
            pieces, close = answers.pop(0)
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.002)
            if close:
                writer.close()
                return

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], requests


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


async def test_a_response_in_single_bytes_and_the_next_on_the_same_connection():
    first = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nx-llmops-cache: hit\r\n\r\nhello world"
    second = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
    server, port, requests = await serve([(bytewise(first), False), ([second], False)])
    async with server:
        conn = HttpConnection(port)
        status, _, body = await conn.request(REQUEST)
        assert (status, body) == (200, b"hello world") and b"x-llmops-cache: hit" in conn.head
        assert (await conn.request(REQUEST))[::2] == (404, b"")
        conn.close()
    assert requests == [REQUEST, REQUEST]


async def test_chunks_cut_anywhere_are_joined_and_the_first_is_timed_when_it_arrives():
    events = [b"data: one\n\n", b"data: " + b"x" * 70000 + b"\n\n", b"data: [DONE]\n\n"]
    chunked = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    pieces = [head + chunked[:3], *(chunked[i : i + 997] for i in range(3, len(chunked), 997))]
    server, port, _ = await serve([(pieces, False), ([b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], False)])
    async with server:
        conn = HttpConnection(port)
        sent = time.perf_counter()
        status, first, body = await conn.request(REQUEST)
        assert status == 200 and body == b"".join(events)
        assert first - sent < time.perf_counter() - sent - 0.05  # the first chunk, long before the last
        assert (await conn.request(REQUEST))[2] == b"ok"  # nothing of the stream was left behind
        conn.close()


async def test_a_body_ended_by_the_server_closing_then_a_new_connection():
    closing = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end"
    again = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    server, port, requests = await serve([(bytewise(closing), True), ([again], False)])
    async with server:
        conn = HttpConnection(port)
        status, _, body = await conn.request(REQUEST)
        assert (status, body) == (200, b"until the end")
        assert (await conn.request(REQUEST))[::2] == (200, b"ok")  # on a new connection
        conn.close()
    assert len(requests) == 2


async def test_a_connection_lost_mid_body_is_an_error():
    cut = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part"
    server, port, _ = await serve([([cut], True)])
    async with server:
        conn = HttpConnection(port)
        with pytest.raises((asyncio.IncompleteReadError, OSError)):
            await conn.request(REQUEST)
        conn.close()


async def test_a_request_given_up_on_leaves_no_answer_for_the_next():
    late = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nold"
    fresh = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nnew"
    server, port, requests = await serve([([b"", b"", b"", b"", b"", b"", b"", b"", b"", b"", late], False),
                                          ([fresh], False)])  # fmt: skip
    async with server:
        conn = HttpConnection(port)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(conn.request(REQUEST), 0.005)
        assert (await conn.request(REQUEST))[::2] == (200, b"new")
        conn.close()
    assert len(requests) == 2


async def test_a_last_chunk_cut_by_the_close_and_a_bad_status_line():
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    server, port, _ = await serve([([head + b"3\r\nabc\r\n0\r\n"], True), ([b"HTTP/1.1 2x0 OK\r\n\r\nbody"], True)])
    async with server:
        conn = HttpConnection(port)
        assert (await conn.request(REQUEST))[::2] == (200, b"abc")
        with pytest.raises(ValueError):
            await conn.request(REQUEST)
        conn.close()
