"""Headless Chromium for report tests, driven over the DevTools protocol (aiohttp's websocket
client). Every request the page makes is seen twice: by the DevTools Network domain (including
requests the page's CSP blocks) and by a loopback HTTP proxy that all of the browser's traffic is
sent through (loopback included) and that records each request and answers 502. Nothing leaves
the machine either way.

    async with Chromium(tmp_path) as browser:
        page = await browser.open(path)
        await page.evaluate("document.title")
        png = await page.screenshot()
        browser.proxy.requests, page.requests
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socketserver
import subprocess
import threading
import time
from pathlib import Path

import aiohttp

CHROMIUM_NAMES = ("chromium", "chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def chromium_binary() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class _ProxyHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline(65536).decode("latin-1").strip()
        if line:
            self.server.requests.append(line)
        with contextlib.suppress(OSError):
            self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


class RecordingProxy(socketserver.ThreadingTCPServer):
    """An HTTP proxy on a free loopback port that forwards nothing: it records each request line
    (GET http://... or CONNECT host:443) and answers 502."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.requests: list[str] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def __enter__(self) -> "RecordingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=10)


class Page:
    """One tab: commands and the events seen since it was opened."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._next_id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self.events: list[dict] = []
        self._load = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._pending:
                self._pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)
                if data["method"] == "Page.loadEventFired":
                    self._load.set()

    async def send(self, method: str, **params) -> dict:
        self._next_id += 1
        future = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        await self.ws.send_str(json.dumps({"id": self._next_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 60)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def navigate(self, url: str) -> None:
        self._load.clear()
        await self.send("Page.navigate", url=url)
        await asyncio.wait_for(self._load.wait(), 60)

    async def evaluate(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def mouse(self, kind: str, x: float, y: float) -> None:
        params = {"type": kind, "x": x, "y": y}
        if kind in ("mousePressed", "mouseReleased"):
            params.update(button="left", clickCount=1)
        await self.send("Input.dispatchMouseEvent", **params)

    async def click(self, x: float, y: float) -> None:
        await self.mouse("mouseMoved", x, y)
        await self.mouse("mousePressed", x, y)
        await self.mouse("mouseReleased", x, y)

    async def screenshot(self) -> bytes:
        """The whole page, not only the viewport."""
        width, height = await self.evaluate("[document.documentElement.scrollWidth, "
                                            "document.documentElement.scrollHeight]")
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                               clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        return base64.b64decode(shot["data"])

    @property
    def requests(self) -> list[str]:
        """URL of every request the page started (Network.requestWillBeSent)."""
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    @property
    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and blocked loads (e.g. by the page's CSP)."""
        out = []
        for e in self.events:
            p = e["params"]
            if e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(p["entry"]["text"])
            elif e["method"] == "Runtime.exceptionThrown":
                out.append(p["exceptionDetails"].get("text", "exception"))
            elif e["method"] == "Runtime.consoleAPICalled" and p["type"] == "error":
                out.append(str(p["args"]))
            elif e["method"] == "Network.loadingFailed":
                out.append(f"load failed: {p.get('errorText')} {p.get('blockedReason') or ''}")
        return out

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Chromium:
    def __init__(self, workdir: Path, width: int = 1280, height: int = 900) -> None:
        binary = chromium_binary()
        if binary is None:
            raise RuntimeError("chromium is not installed")
        self.binary, self.workdir, self.size = binary, Path(workdir), (width, height)
        self.proxy = RecordingProxy()
        self._proc: subprocess.Popen | None = None
        self._session: aiohttp.ClientSession | None = None
        self._pages: list[Page] = []

    async def __aenter__(self) -> "Chromium":
        self.proxy.__enter__()
        profile = self.workdir / "chromium-profile"          # fresh for every browser
        profile.mkdir(parents=True, exist_ok=False)
        self._log = open(self.workdir / "chromium.log", "wb")
        self._proc = subprocess.Popen(
            [self.binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             f"--proxy-server=http://127.0.0.1:{self.proxy.port}", "--proxy-bypass-list=<-loopback>",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 120
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                await self.__aexit__(None, None, None)
                raise RuntimeError(f"chromium did not start; see {self.workdir / 'chromium.log'}")
            await asyncio.sleep(0.1)
        self.port = int(port_file.read_text().splitlines()[0])
        self._session = aiohttp.ClientSession()
        return self

    async def open(self, path: str | os.PathLike | None = None, url: str | None = None) -> Page:
        """A new tab with the Network, Page, Log and Runtime domains on, then the file loaded."""
        async with self._session.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as resp:
            target = await resp.json(content_type=None)
        page = Page(await self._session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0))
        self._pages.append(page)
        for domain in ("Network", "Page", "Log", "Runtime"):
            await page.send(f"{domain}.enable")
        await page.send("Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1],
                        deviceScaleFactor=1, mobile=False)
        await page.navigate(url or Path(path).resolve().as_uri())
        return page

    async def __aexit__(self, *exc) -> None:
        for page in self._pages:
            with contextlib.suppress(Exception):
                await page.close()
        if self._session is not None:
            await self._session.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        self._log.close()
        self.proxy.__exit__(None, None, None)
