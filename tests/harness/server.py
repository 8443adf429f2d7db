"""The real ComfyUI server (`main.py --cpu`) in a child process, with Marionette installed."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from .comfy_host import PACK_NAME, PACK_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, comfy_dir: str | None = None, port: int | None = None, test_models: bool = False):
        self.comfy_dir = comfy_dir or os.environ["MARIONETTE_COMFY"]
        self.test_models = test_models  # offer the tiny test models (MARIONETTE_TEST_MODELS=1)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = tempfile.mkdtemp(prefix="marionette_server_")
        for kind in ("custom_nodes", "input", "output", "temp", "user"):
            os.makedirs(os.path.join(self.base, kind), exist_ok=True)
        os.symlink(PACK_ROOT, os.path.join(self.base, "custom_nodes", PACK_NAME))
        self.log_path = os.path.join(self.base, "server.log")
        self.proc = None

    def start(self, timeout: float = 120.0) -> "ComfyServer":
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--disable-api-nodes", "--base-directory", self.base,
               "--database-url", "sqlite:///:memory:", "--log-stdout"]
        env = dict(os.environ, HF_HUB_OFFLINE="1", DO_NOT_TRACK="1", PYTHONUNBUFFERED="1")
        env.pop("MARIONETTE_TEST_MODELS", None)  # by default the server shows what a user sees: no tiny models
        if self.test_models:
            env["MARIONETTE_TEST_MODELS"] = "1"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc:
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def get(self, path: str, raw: bool = False):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            data = r.read()
        return data if raw else json.loads(data)

    def post(self, path: str, payload: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")
