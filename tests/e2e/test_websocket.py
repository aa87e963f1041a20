"""The gateway's websocket upgrade against raw requests over TLS: the
x-airlock-unmasked extension (our client's and agent's frames go unmasked)
is agreed only when offered, and only then is an unmasked frame taken."""

import json
import socket
import ssl
from urllib.parse import urlparse

EXTENSION = "x-airlock-unmasked"


def upgrade(gateway, offer):
    url = urlparse(gateway.url)
    ctx = ssl.create_default_context(cafile=gateway.ca_bundle)
    raw = socket.create_connection((url.hostname, url.port), timeout=30)
    sock = ctx.wrap_socket(raw, server_hostname=url.hostname)
    request = (
        "GET /v1/data-channel/s-0123456789abcdef0?role=publish_subscribe HTTP/1.1\r\n"
        f"Host: {url.netloc}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        + (f"Sec-WebSocket-Extensions: permessage-deflate, {EXTENSION}\r\n" if offer else "")
        + "\r\n"
    )
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, f"connection closed during the upgrade: {head!r}"
        head += chunk
    return sock, head.decode()


def read_frame(sock):
    """(opcode, payload) of the next server frame, or None at end of stream."""
    def exact(n):
        out = b""
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            if not chunk:
                return None
            out += chunk
        return out

    head = exact(2)
    if head is None:
        return None
    assert head[1] & 0x80 == 0, "a server frame was masked"
    n = head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(exact(2), "big")
    elif n == 127:
        n = int.from_bytes(exact(8), "big")
    return head[0] & 0x0F, exact(n)


def unmasked_text(payload):
    assert len(payload) < 126
    return bytes([0x81, len(payload)]) + payload


def test_unmasked_frames_are_agreed_only_when_offered(gateway):
    # Offered: the 101 names the extension, and an unmasked frame is read as
    # a message (a malformed OpenDataChannel, refused by its content).
    sock, head = upgrade(gateway, offer=True)
    with sock:
        assert head.startswith("HTTP/1.1 101"), head
        assert f"sec-websocket-extensions: {EXTENSION}\r\n" in head.lower(), head
        sock.sendall(unmasked_text(json.dumps({"MessageSchemaVersion": 1}).encode()))
        frame = read_frame(sock)
        assert frame is not None and frame[0] == 0x8, frame
        assert int.from_bytes(frame[1][:2], "big") == 1008, frame
        assert b"invalid OpenDataChannel" in frame[1], frame

    # Not offered: no extension in the 101, and the same unmasked frame is a
    # protocol error that ends the connection without reading the message.
    sock, head = upgrade(gateway, offer=False)
    with sock:
        assert head.startswith("HTTP/1.1 101"), head
        assert "sec-websocket-extensions" not in head.lower(), head
        sock.sendall(unmasked_text(json.dumps({"MessageSchemaVersion": 1}).encode()))
        frame = read_frame(sock)
        assert frame is None or b"invalid OpenDataChannel" not in frame[1], frame
