"""Drives the control panel in headless Chromium: charts and heatmap have data, a LoRA job starts and cancels.

usage: panel_browser.py URL TOKEN SCREENSHOT.png
Talks to Chromium over the DevTools protocol (websocket-client). Prints a one-line JSON report and
exits 0, or prints the reason and the page text and exits 1.
"""
import base64
import json
import os
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket

CHROMIUM = "/usr/bin/chromium"
COUNTS = """JSON.stringify({
  ndcg: document.querySelectorAll('#ndcg-chart circle.point').length,
  fallback: document.querySelectorAll('#fallback-chart circle.point').length,
  cells: document.querySelectorAll('#heatmap .cell').length})"""
JOB_STATE = "(document.querySelector('#job-state') || {}).textContent || ''"


class Failure(Exception):
    pass


class DevTools:
    def __init__(self, ws_url):
        # Chromium rejects DevTools websockets whose Origin it does not allow; send none.
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # skip events until our answer arrives
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise Failure(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expr):
        res = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        if "exceptionDetails" in res:
            raise Failure(f"evaluating {expr!r}: {res['exceptionDetails'].get('text')}")
        return res["result"].get("value")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_ws_url(port, deadline):
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        time.sleep(0.2)
    raise Failure("Chromium did not open its DevTools endpoint")


def wait_for(dt, timeout, check, failure, states):
    """Polls check() until it returns a truthy value; records every #job-state text seen on the way."""
    deadline = time.time() + timeout
    while True:
        job_state = dt.eval(JOB_STATE)
        if job_state and (not states or states[-1] != job_state):
            states.append(job_state)
        value = check(job_state)
        if value:
            return value
        if time.time() > deadline:
            raise Failure(failure)
        time.sleep(0.25)


def run(dt, url, token, screenshot, states):
    dt.call("Page.enable")
    # --window-size includes the window frame; pin the viewport itself so the screenshot is 1280×900
    dt.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
    dt.call("Page.navigate", url=f"{url.rstrip('/')}/")
    # The token goes into the Token field, as a user types it (the panel ignores tokens in URLs).
    wait_for(dt, 30, lambda _: dt.eval("!!document.querySelector('#token')"), "no #token field", [])
    dt.eval("(() => { const i = document.querySelector('#token'); i.value = " + json.dumps(token)
            + "; i.dispatchEvent(new Event('change')); })()")

    def has_points(_):
        c = json.loads(dt.eval(COUNTS) or "{}")
        return c if c and min(c.values()) >= 1 else None

    counts = wait_for(dt, 60, has_points, "charts have no data points", states)

    dt.eval("document.querySelector('#start').click()")
    wait_for(dt, 180, lambda s: s in ("queued", "running"), "job did not reach queued/running after #start", states)

    shot = dt.call("Page.captureScreenshot", format="png")
    with open(screenshot, "wb") as f:
        f.write(base64.b64decode(shot["data"]))

    dt.eval("document.querySelector('#cancel').click()")
    wait_for(dt, 180, lambda s: s == "cancelled", "job did not reach cancelled after #cancel", states)
    return counts


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    url, token, screenshot = sys.argv[1:]
    started = time.time()
    port, profile = free_port(), tempfile.mkdtemp(prefix="aion-panel-")
    chromium, dt, states = None, None, []
    try:
        chromium = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "--window-size=1280,900",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # its own process group, so its helper processes go with it
        dt = DevTools(page_ws_url(port, time.time() + 30))
        counts = run(dt, url, token, screenshot, states)
        print(json.dumps({"ok": True, "ndcg_points": counts["ndcg"], "fallback_points": counts["fallback"],
                          "heatmap_cells": counts["cells"], "states": states,
                          "elapsed_s": round(time.time() - started, 1), "screenshot": screenshot}))
        return 0
    except Exception as e:  # any failure: say why and show what the page showed
        print(f"panel check failed: {e}", file=sys.stderr)
        try:
            print((dt.eval("document.body ? document.body.innerText : ''") or "")[:2000] if dt else "", file=sys.stderr)
        except Exception as e2:
            print(f"(page text unavailable: {e2})", file=sys.stderr)
        return 1
    finally:
        if dt:
            dt.ws.close()
        for sig in (signal.SIGTERM, signal.SIGKILL) if chromium else ():
            try:
                os.killpg(chromium.pid, sig)
                chromium.wait(10)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
