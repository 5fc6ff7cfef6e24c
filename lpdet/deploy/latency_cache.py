"""Latencies measured on a device, cached per device id and model content (SHA-256), so a design or
a search that meets the same exported file again does not occupy the phone or board again.

One small JSON file (default `$LPDET_CACHE/device_latency.json`, i.e. ~/.cache/lpdet/...):
``{"version": 1, "entries": {DEVICE_ID: {SHA256: {"model": name, "samples_ms": [...],
"summary_ms": {...}, "statistic": "median" | "avg", "measured_at": ISO time}}}}``, rewritten
atomically on every change so a crash leaves the previous file. An unreadable cache is ignored
with a warning (and replaced on the next write): it only ever saves time.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from lpdet.serialize import atomic_write_text, file_sha256

__all__ = ["LatencyCache", "default_cache_path"]

log = logging.getLogger("lpdet")
VERSION = 1


def default_cache_path() -> Path:
    from lpdet.data.spec import default_cache_dir

    return default_cache_dir() / "device_latency.json"


class LatencyCache:
    """get/put device measurements keyed by (device id, model SHA-256)."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path is not None else default_cache_path()

    def _read(self) -> dict:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
            entries = data["entries"] if data.get("version") == VERSION else {}
            return entries if isinstance(entries, dict) else {}
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
            log.warning("%s: unreadable latency cache ignored (%s); it will be rewritten", self.path, e)
            return {}

    @staticmethod
    def key(model: Path | str) -> str:
        return file_sha256(Path(model))

    def get(self, device_id: str, model: Path | str) -> dict | None:
        """The cached entry for `model` (its content) on `device_id`, or None."""
        return self._read().get(device_id, {}).get(self.key(model))

    def put(self, device_id: str, model: Path | str, samples_ms: list[float], summary_ms: dict,
            statistic: str) -> dict:
        """Store a measurement (concurrent writers: the last one wins; it is only a cache)."""
        entries = self._read()
        entry = {"model": Path(model).name, "samples_ms": [float(x) for x in samples_ms],
                 "summary_ms": {k: float(v) for k, v in summary_ms.items()}, "statistic": statistic,
                 "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        entries.setdefault(device_id, {})[self.key(model)] = entry
        atomic_write_text(self.path, json.dumps({"version": VERSION, "entries": entries}, indent=1) + "\n")
        return entry
