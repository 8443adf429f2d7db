"""The real ComfyUI frontend in Debian's headless Chromium, driven by Python playwright."""
from __future__ import annotations

import contextlib
import os
import tempfile

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
# Messages a fresh frontend 1.32.9 logs with no custom nodes at all (missing user files, blocked
# registry calls under --disable-api-nodes); anything else is ours to explain. A failed request's console
# line names no URL: the network log below does, and is checked on its own.
BENIGN = ("404", "Content Security Policy", "api.comfy.org", "Failed to load resource",
          "Cannot read properties of undefined (reading 'id')")
# Requests that fail in a fresh ComfyUI 0.3.75 with no custom nodes (a new user has no user.css, saved
# workflows, subgraphs or templates file), and the registry calls the CSP of --disable-api-nodes blocks.
HOST_OWN_FAILURES = ("/user.css", "/api/userdata/user.css", "/api/userdata?dir=workflows",
                     "/api/userdata?dir=subgraphs", "/api/userdata/comfy.templates.json", "https://api.comfy.org/")


@contextlib.contextmanager
def frontend(server, node_types: tuple[str, ...], timeout_ms: int = 120_000):
    """Yields (page, console, network) once the app is up and `node_types` are registered: the console
    messages, and every failed request ("<status> <url>" or "failed <url> <reason>") since the page opened."""
    from playwright.sync_api import sync_playwright
    if not os.path.exists(CHROMIUM):
        raise FileNotFoundError(f"{CHROMIUM} is missing: apt-get install chromium")
    server.post("/api/settings", {"Comfy.TutorialCompleted": True})  # no first-run template dialog
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            user_data_dir=tempfile.mkdtemp(prefix="marionette_chromium_"), executable_path=CHROMIUM,
            headless=True, args=FLAGS, viewport={"width": 1600, "height": 1000})
        try:
            page = ctx.new_page()
            console, network = [], []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.on("response", lambda r: r.status >= 400 and network.append(f"{r.status} {r.url}"))
            page.on("requestfailed", lambda r: network.append(f"failed {r.url} {r.failure}"))
            page.goto(server.url, wait_until="domcontentloaded")
            page.wait_for_function(
                "(types) => window.app && window.app.graph && window.LiteGraph"
                " && types.every(t => t in window.LiteGraph.registered_node_types)",
                arg=list(node_types), timeout=timeout_ms)
            yield page, console, network
        finally:
            ctx.close()


def unexpected_errors(console: list[str]) -> list[str]:
    return [c for c in console if c.startswith(("error", "pageerror")) and not any(b in c for b in BENIGN)]


def unexpected_failures(network: list[str], base_url: str) -> list[str]:
    """The failed requests a fresh ComfyUI without our pack would not make."""
    def own(entry: str) -> bool:
        url = entry.split(" ")[1]
        path = url[len(base_url):] if url.startswith(base_url) else url
        return path.startswith(HOST_OWN_FAILURES)
    return [entry for entry in network if not own(entry)]
