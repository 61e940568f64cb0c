"""A headless Chromium driven over the DevTools protocol (CDP), for tests that click in a report.

No browser-automation package is installable offline (Playwright downloads its browsers
from a CDN), so this speaks CDP itself over the ``websockets`` client Prefect already
brings: ``Browser(url)`` starts Debian's chromium with a throwaway profile, opens ``url``,
and offers ``js(expr)`` (evaluate, JSON result), ``click(selector)`` (a real mouse press
and release at the element's centre, after scrolling it into view) and
``screenshot(path, selector)``.

    python tests/browser.py REPORT.html OUT.png   # a screenshot of the report's data view (docs/data-view.png)
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage",
         "--disable-extensions", "--no-first-run", "--hide-scrollbars", "--window-size=1300,1800"]


class Browser:
    def __init__(self, url: str, timeout: float = 60):
        from websockets.sync.client import connect

        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if not exe:
            raise RuntimeError("headless Chromium is missing: `make test` installs it (apt-get install chromium)")
        self._profile = tempfile.mkdtemp(prefix="sphere-chromium-")
        self._proc = subprocess.Popen([exe, *FLAGS, "--remote-debugging-port=0", f"--user-data-dir={self._profile}", "about:blank"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = None
        deadline = time.monotonic() + timeout
        while port is None and time.monotonic() < deadline:
            line = self._proc.stderr.readline()
            if not line and self._proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._proc.returncode} before listening")
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            port = int(m.group(1)) if m else None
        if port is None:
            self.close()
            raise RuntimeError("chromium did not open its DevTools port")
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout))
        page = next(t for t in targets if t["type"] == "page")
        self._ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout)
        self._ids = itertools.count(1)
        self._timeout = timeout
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        while self.js("document.readyState") != "complete" and time.monotonic() < deadline:
            time.sleep(0.1)

    def call(self, method: str, **params) -> dict:
        """Send one CDP command and return its result (events in between are skipped)."""
        i = next(self._ids)
        self._ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv(timeout=self._timeout))
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expr: str):
        """The JSON value of a JavaScript expression in the page."""
        res = self.call("Runtime.evaluate", expression=f"JSON.stringify({expr})", returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expr}: {res['exceptionDetails']}")
        value = res["result"].get("value")
        return None if value is None else json.loads(value)

    def click(self, selector: str) -> None:
        """A left mouse click at the centre of the first element matching ``selector``."""
        box = self.js(f"(function(){{var e=document.querySelector({json.dumps(selector)}); if(!e) return null; "
                      "e.scrollIntoView({block:'center'}); var r=e.getBoundingClientRect(); return [r.x+r.width/2, r.y+r.height/2];})()")
        if box is None:
            raise LookupError(f"nothing matches {selector!r}")
        x, y = box
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path: Path, selector: str | None = None) -> Path:
        """A PNG of the viewport, scrolled so that ``selector``'s element is at the top."""
        if selector:
            self.js(f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block:'start'}})")
        data = self.call("Page.captureScreenshot", format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        try:
            self._ws.close()
        except Exception:  # noqa: BLE001 - closing a connection that may already be gone
            pass
        self._proc.kill()
        self._proc.wait(timeout=30)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    report, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    with Browser(report.as_uri()) as b:
        b.click("#dv-filters button[data-field='kind'][data-value='pair']")
        b.screenshot(out, "#data")
    print(out)
