"""A small RFC 6455 websocket client (text frames in, masked frames out) on the stdlib, enough to
follow ComfyUI's /ws progress stream without any dependency."""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
import urllib.parse

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocketClosed(ConnectionError):
    """The peer closed the connection or it broke."""


class WebSocket:
    def __init__(self, url: str, timeout: float = 10.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"websocket url must start with ws:// or wss://, got {url!r}")
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sock = socket.create_connection((host, port), timeout=timeout)
        if parts.scheme == "wss":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        self._sock = sock
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_op = None
        try:
            self._handshake(host if parts.port is None else f"{host}:{port}", path)
        except BaseException:
            sock.close()
            raise

    def _handshake(self, host: str, path: str):
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self._sock.sendall(request.encode())
        while b"\r\n\r\n" not in self._buf:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise WebSocketClosed("connection closed during the websocket handshake")
            self._buf += chunk
            if len(self._buf) > 65536:
                raise WebSocketClosed("websocket handshake response too long")
        head, _, rest = bytes(self._buf).partition(b"\r\n\r\n")
        self._buf = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise WebSocketClosed(f"websocket upgrade refused: {lines[0]}")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        expected = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            raise WebSocketClosed("websocket handshake: bad Sec-WebSocket-Accept")

    def _send_frame(self, opcode: int, payload: bytes):
        head = bytearray([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head.append(0x80 | n)
        elif n < 1 << 16:
            head.append(0x80 | 126)
            head += struct.pack("!H", n)
        else:
            head.append(0x80 | 127)
            head += struct.pack("!Q", n)
        mask = os.urandom(4)  # clients must mask every frame (RFC 6455 5.3)
        head += mask
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        try:
            self._sock.sendall(bytes(head) + masked)
        except OSError as e:
            raise WebSocketClosed(str(e)) from e

    def send_text(self, text: str):
        self._send_frame(OP_TEXT, text.encode())

    def _parse_frame(self):
        """(fin, opcode, payload) of the first complete frame in the buffer, else None."""
        buf = self._buf
        if len(buf) < 2:
            return None
        fin, opcode = buf[0] & 0x80, buf[0] & 0x0F
        masked, n = buf[1] & 0x80, buf[1] & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                return None
            n = struct.unpack("!H", buf[2:4])[0]
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n = struct.unpack("!Q", buf[2:10])[0]
            pos = 10
        mask = b""
        if masked:
            if len(buf) < pos + 4:
                return None
            mask = bytes(buf[pos:pos + 4])
            pos += 4
        if len(buf) < pos + n:
            return None
        payload = bytes(buf[pos:pos + n])
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        del buf[:pos + n]
        return bool(fin), opcode, payload

    def recv(self, timeout: float | None = None):
        """The next whole message as (opcode, payload bytes), or None when `timeout` passes first.
        Partial frames stay buffered across timeouts, so the stream never loses its framing."""
        self._sock.settimeout(timeout)
        while True:
            frame = self._parse_frame()
            if frame is None:
                try:
                    chunk = self._sock.recv(65536)
                except (socket.timeout, TimeoutError):
                    return None
                except OSError as e:
                    raise WebSocketClosed(str(e)) from e
                if not chunk:
                    raise WebSocketClosed("connection closed by the server")
                self._buf += chunk
                continue
            fin, opcode, payload = frame
            if opcode == OP_PING:
                self._send_frame(OP_PONG, payload)
            elif opcode == OP_PONG:
                pass
            elif opcode == OP_CLOSE:
                try:
                    self._send_frame(OP_CLOSE, payload[:2])
                except WebSocketClosed:
                    pass
                self.close()
                raise WebSocketClosed("the server closed the websocket")
            elif opcode == OP_CONT:
                self._fragments.append(payload)
                if fin:
                    op, data = self._fragment_op, b"".join(self._fragments)
                    self._fragments, self._fragment_op = [], None
                    return op, data
            else:
                if fin:
                    return opcode, payload
                self._fragment_op, self._fragments = opcode, [payload]

    def close(self):
        try:
            self._sock.close()
        except OSError:
            pass
