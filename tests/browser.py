"""A headless Chromium driven through the DevTools protocol, for the report's page test."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["chromium", "load_page"]


def chromium() -> str | None:
    """The Chromium (or Chrome) executable on PATH, if any."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def load_page(url: str, screenshot: Path, timeout: float = 60.0) -> dict[str, Any]:
    """Load ``url`` in a headless browser, wait for it, and report what happened.

    Returns
    -------
    dict
        ``errors``: console errors and uncaught exceptions; ``images``: for each ``<img>``,
        its alt text and whether it decoded to a non-empty picture; ``title``.
        A full-page PNG is written to ``screenshot``.
    """
    import websocket  # websocket-client

    exe = chromium()
    if exe is None:
        raise RuntimeError("no Chromium on PATH")
    profile = tempfile.mkdtemp(prefix="asn2n-chromium-")
    args = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1280,2000",
            "--no-first-run", "about:blank"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ws_url = None
        deadline = time.monotonic() + timeout
        assert proc.stderr is not None
        while ws_url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError("Chromium exited before it listened")
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                ws_url = m.group(1)
        if ws_url is None:
            raise RuntimeError("Chromium did not start in time")
        port = ws_url.split(":")[2].split("/")[0]
        import urllib.request

        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json").read())
        page = next(t for t in targets if t.get("type") == "page")
        ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        counter = iter(range(1, 1_000_000))
        errors: list[str] = []
        loaded = False

        def call(method: str, **params: Any) -> dict[str, Any]:
            nonlocal loaded
            mid = next(counter)
            ws.send(json.dumps({"id": mid, "method": method, "params": params}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get("id") == mid:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg.get("result", {})
                _event(msg)

        def _event(msg: dict[str, Any]) -> None:
            nonlocal loaded
            method, p = msg.get("method"), msg.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(p.get("exceptionDetails", {}).get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                errors.append(p["entry"].get("text", "log error"))
            elif method == "Page.loadEventFired":
                loaded = True

        call("Page.enable")
        call("Runtime.enable")
        call("Log.enable")
        call("Page.navigate", url=url)
        while not loaded and time.monotonic() < deadline:
            _event(json.loads(ws.recv()))
        if not loaded:
            raise RuntimeError("the page did not finish loading in time")
        check = ("Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0 && "
                 "i.naturalHeight > 0])")
        images = call("Runtime.evaluate", expression=check, returnByValue=True)["result"]["value"]
        title = call("Runtime.evaluate", expression="document.title", returnByValue=True)["result"]["value"]
        metrics = call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                    clip={"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 12000), "scale": 1})
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        ws.close()
        return {"errors": errors, "images": [(alt, bool(ok)) for alt, ok in images], "title": title}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)
