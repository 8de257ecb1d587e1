"""Debian's Chromium, headless, driven over its DevTools protocol (no browser download, no extra
Python package: the websocket client is aiohttp, which ComfyUI already needs)."""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from .comfy_server import stop_process_group

CHROMIUM = os.environ.get("FEWSTEP_CHROMIUM", "/usr/bin/chromium")
# Flags that work as root in a container: no sandbox, no GPU, nothing fetched from the network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
         "--force-device-scale-factor=1"]


def chromium_path() -> str | None:
    path = CHROMIUM if os.path.isfile(CHROMIUM) else shutil.which("chromium")
    return path if path and os.access(path, os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrowserError(RuntimeError):
    pass


class Chromium:
    """One headless Chromium with one page. Methods are synchronous; each runs the private event
    loop until its answer arrives, buffering the events (console, exceptions) seen meanwhile."""

    def __init__(self, profile: Path, width=1400, height=900):
        self.profile = Path(profile)
        self.width, self.height = width, height
        self.proc = None
        self.loop = asyncio.new_event_loop()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self.console: list[dict] = []    # {"level", "text", "url"} from console, log and exceptions
        self.blocked: list[str] = []     # URLs failed by block_requests()
        self._session = self._ws = self._reader = None

    # -- life cycle ------------------------------------------------------------------------------
    def start(self, timeout=60):
        exe = chromium_path()
        if exe is None:
            raise BrowserError(f"no Chromium at {CHROMIUM}: run `bash scripts/browser.sh` (apt-get install chromium)")
        port = _free_port()
        self.profile.mkdir(parents=True, exist_ok=True)
        cmd = [exe, *FLAGS, f"--user-data-dir={self.profile}", f"--remote-debugging-port={port}",
               f"--window-size={self.width},{self.height}", "about:blank"]
        self._log = open(self.profile / "chromium.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        targets = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise BrowserError(f"Chromium exited with {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    targets = [t for t in json.loads(r.read()) if t.get("type") == "page"]
                if targets:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        if not targets:
            self.stop()
            raise BrowserError(f"Chromium's DevTools did not answer within {timeout}s: {self.log()[-2000:]}")
        self._run(self._connect(targets[0]["webSocketDebuggerUrl"]))
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)
        return self

    def stop(self):
        try:
            if self._ws is not None:
                self._run(self._close(), timeout=10)
        except Exception:
            pass
        stop_process_group(self.proc, 10)
        if getattr(self, "_log", None):
            self._log.close()
        if not self.loop.is_closed():
            self.loop.close()

    def log(self) -> str:
        path = self.profile / "chromium.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- protocol --------------------------------------------------------------------------------
    async def _connect(self, url):
        import aiohttp
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(url, max_msg_size=0, heartbeat=None)
        self._reader = self.loop.create_task(self._read())

    async def _close(self):
        await self._ws.close()
        await self._session.close()

    async def _read(self):
        async for msg in self._ws:
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
            else:
                self._event(data.get("method"), data.get("params", {}))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(BrowserError("DevTools connection closed"))

    def _event(self, method, p):
        if method == "Fetch.requestPaused":  # only patterns given to block_requests() pause
            self.blocked.append(p["request"]["url"])
            self.loop.create_task(self._send("Fetch.failRequest", {"requestId": p["requestId"],
                                                                   "errorReason": "ConnectionRefused"}))
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            frames = (p.get("stackTrace") or {}).get("callFrames") or [{}]
            self.console.append({"level": p.get("type"), "text": text, "url": frames[0].get("url", "")})
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            text = (d.get("exception") or {}).get("description") or d.get("text", "")
            frames = (d.get("stackTrace") or {}).get("callFrames") or [{}]
            self.console.append({"level": "exception", "text": text, "url": d.get("url") or frames[0].get("url", "")})
        elif method == "Log.entryAdded":
            e = p.get("entry", {})
            self.console.append({"level": e.get("level"), "text": e.get("text", ""), "url": e.get("url", "")})

    async def _send(self, method, params):
        msg_id = next(self._ids)
        fut = self.loop.create_future()
        self._pending[msg_id] = fut
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        data = await fut
        if "error" in data:
            raise BrowserError(f"{method}: {data['error']}")
        return data.get("result", {})

    def _run(self, coro, timeout=120):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def send(self, method, timeout=120, **params):
        return self._run(self._send(method, params), timeout)

    # -- conveniences ----------------------------------------------------------------------------
    def goto(self, url, timeout=60):
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", timeout=timeout)

    def js(self, expression: str, timeout=60):
        """Evaluates an expression (awaiting a promise) and returns its JSON value."""
        r = self.send("Runtime.evaluate", timeout=timeout + 5, expression=expression, awaitPromise=True,
                      returnByValue=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise BrowserError(f"page JS failed: {(d.get('exception') or {}).get('description') or d.get('text')}")
        return r.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout=60, interval=0.2):
        """Polls a JS expression until it is truthy; returns its value."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                last = self.js(f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()")
            except BrowserError:
                last = None
            if last:
                return last
            self._run(asyncio.sleep(interval))
        raise BrowserError(f"timed out after {timeout}s waiting for: {expression} (last value {last!r})")

    def block_requests(self, url_pattern: str | None):
        """Fails every request matching the pattern (as if the server were gone); None stops it."""
        if url_pattern:
            self.send("Fetch.enable", patterns=[{"urlPattern": url_pattern}])
        else:
            self.send("Fetch.disable")

    def pause(self, seconds):
        self._run(asyncio.sleep(seconds))

    def mouse(self, kind, x, y, button="none", clicks=0):
        self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button=button, clickCount=clicks)

    def click(self, x, y):
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y, "left", 1)
        self.mouse("mouseReleased", x, y, "left", 1)

    def screenshot(self, path: Path, clip: dict | None = None):
        params = {"format": "png"}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        data = self.send("Page.captureScreenshot", **params)["data"]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)
