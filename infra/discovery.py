"""Where the CLI finds a running service: ``<data_dir>/service.json``.

A service writes it at start (atomically: temp file, fsync, rename) with the URL of its
bus when that URL carries no secret (the embedded server's, on loopback, a new port at
each start), and its identity: pid, instance id, host, start time. At a graceful stop
the file is removed; after a crash it stays, and the CLI treats it as stale when its
pid is gone on this host. The CLI's precedence for the bus URL: ``--nats-url``, then
``$NATS_URL``, then this file under ``--data-dir`` (or its default).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..schemas.config import Config
from .atomicfile import atomic_write_bytes

FILENAME = "service.json"


def path_for(data_dir: Path) -> Path:
    return Path(data_dir) / FILENAME


def write(data_dir: Path, *, url: str, embedded: bool, instance_id: str, started_at: str, prefix: str) -> Path:
    has_secret = bool(urlsplit(url).password) or "@" in url
    info = {"url": None if has_secret else url, "embedded": embedded, "prefix": prefix,
            "pid": os.getpid(), "host": socket.gethostname(), "instance_id": instance_id,
            "started_at": started_at, "data_dir": str(Path(data_dir).resolve())}
    target = path_for(data_dir)
    atomic_write_bytes(target, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
    return target


def remove(data_dir: Path, instance_id: str) -> None:
    """At a graceful stop: remove the file, if it is still this instance's."""
    target = path_for(data_dir)
    info = read(data_dir)
    if info is not None and info.get("instance_id") == instance_id:
        try:
            target.unlink()
        except OSError:
            pass


def read(data_dir: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path_for(data_dir).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def stale(info: dict[str, Any]) -> bool:
    """True when the file names a process on this host that no longer runs."""
    if info.get("host") != socket.gethostname():
        return False
    pid = info.get("pid")
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def bus_url(config: Config) -> tuple[str | None, str]:
    """The bus URL and where it came from: flag/env/config (``bus.url``), else the data folder's file."""
    if config.bus.url:
        return config.bus.url, "--nats-url / NATS_URL / bus.url"
    info = read(Path(config.storage.data_dir))
    if info is None:
        return None, f"no running service in {Path(config.storage.data_dir).resolve()} (no service.json)"
    if stale(info):
        return None, (f"the service that wrote {path_for(Path(config.storage.data_dir))} (pid {info.get('pid')}) "
                      "is no longer running")
    if not info.get("url"):
        return None, (f"the service in {config.storage.data_dir} uses a bus whose URL holds credentials; "
                      "pass --nats-url or set NATS_URL")
    return info["url"], f"{path_for(Path(config.storage.data_dir))}"
