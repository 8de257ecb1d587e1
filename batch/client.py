"""One ComfyUI server over its HTTP API: the calls the batch runner makes, with a clear split between
"the server is unreachable" (ServerDown: retry elsewhere) and "the server answered no" (HTTPError)."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid

from .wsclient import WebSocket


class ServerDown(ConnectionError):
    """The server could not be reached or dropped the connection. `refused`: nothing reached it."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


class ServerRefused(RuntimeError):
    """The server answered with an HTTP error; `status` and the decoded `body` say why."""

    def __init__(self, status: int, body):
        super().__init__(f"HTTP {status}: {json.dumps(body)[:500] if not isinstance(body, str) else body[:500]}")
        self.status, self.body = status, body


def normalise_url(url: str) -> str:
    """'127.0.0.1:8188' -> 'http://127.0.0.1:8188'; keeps a path prefix (reverse proxies)."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"server URL must look like http://host:port, got {url!r}")
    return url.rstrip("/")


class ComfyClient:
    def __init__(self, url: str, timeout: float = 30.0):
        self.url = normalise_url(url)
        self.timeout = timeout

    def __repr__(self):
        return f"ComfyClient({self.url})"

    def _request(self, method: str, path: str, payload=None, raw=False, timeout=None):
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                body = json.loads(text)
            except ValueError:
                body = text
            raise ServerRefused(e.code, body) from None
        except (urllib.error.URLError, http.client.HTTPException, socket.timeout, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServerDown(f"{self.url}: {reason}", refused=isinstance(reason, ConnectionRefusedError)) from None
        if raw:
            return body
        if not body:
            return None
        try:
            return json.loads(body)
        except ValueError:
            raise ServerDown(f"{self.url}{path}: answer is not JSON (is this a ComfyUI server?)") from None

    def get(self, path: str, **kw):
        return self._request("GET", path, **kw)

    def post(self, path: str, payload, **kw):
        return self._request("POST", path, payload, **kw)

    # --- the API calls ---------------------------------------------------------------------------

    def alive(self) -> bool:
        try:
            self.get("/system_stats", timeout=min(self.timeout, 5.0))
            return True
        except (ServerDown, ServerRefused):
            return False

    def object_info(self) -> dict:
        return self.get("/object_info", timeout=max(self.timeout, 60.0))

    def submit(self, prompt: dict, client_id: str, prompt_id: str | None = None) -> dict:
        """POST /prompt. Returns {"prompt_id", "number", "node_errors"}; raises ServerRefused with the
        node_errors body when the server's validation refuses the workflow."""
        payload = {"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id or str(uuid.uuid4())}
        return self.post("/prompt", payload)

    def history(self, prompt_id: str) -> dict | None:
        """The history entry of a finished prompt, or None while it is not finished."""
        return (self.get(f"/history/{urllib.parse.quote(prompt_id)}") or {}).get(prompt_id)

    def queue_ids(self) -> tuple[set, set]:
        """(running, pending) prompt ids."""
        q = self.get("/queue") or {}
        return ({item[1] for item in q.get("queue_running", [])},
                {item[1] for item in q.get("queue_pending", [])})

    def cancel(self, prompt_id: str):
        """Removes a prompt from the queue, or interrupts it if it is running. Interrupt is only sent
        when this very prompt runs: servers older than targeted interrupts stop whatever runs."""
        self.post("/queue", {"delete": [prompt_id]})
        running, _ = self.queue_ids()
        if prompt_id in running:
            self.post("/interrupt", {"prompt_id": prompt_id})

    def download(self, filename: str, subfolder: str, kind: str, dest: str) -> int:
        """GET /view into `dest` (written to a temporary name, then renamed). Returns bytes written."""
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder or "", "type": kind})
        tmp = dest + ".part"
        try:
            with urllib.request.urlopen(f"{self.url}/view?{query}", timeout=max(self.timeout, 120.0)) as r, \
                    open(tmp, "wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)  # streamed: videos can be large
                f.flush()
                os.fsync(f.fileno())
        except urllib.error.HTTPError as e:
            raise ServerRefused(e.code, f"/view {filename}: {e.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, socket.timeout, TimeoutError, ConnectionError) as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise ServerDown(f"{self.url}/view: {getattr(e, 'reason', e)}") from None
        os.replace(tmp, dest)
        return os.path.getsize(dest)

    def websocket(self, client_id: str, timeout: float = 10.0) -> WebSocket:
        parts = urllib.parse.urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        query = urllib.parse.urlencode({"clientId": client_id})
        try:
            return WebSocket(f"{scheme}://{parts.netloc}{parts.path}/ws?{query}", timeout=timeout)
        except (OSError, ConnectionError) as e:
            raise ServerDown(f"{self.url}/ws: {e}") from None
