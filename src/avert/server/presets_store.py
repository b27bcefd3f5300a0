"""The store behind `avert.server.presets`: every client's presets of negatives, in one JSON file or in memory."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path

from avert.errors import FieldProblem, ValidationError

MAX_PRESETS = 64  # per client
MAX_TOTAL = 1024  # over every client
log = logging.getLogger("avert.server")


class PresetStore:
    """Every client's presets ({client: {name: preset}}), kept in `path` (None: in memory only)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, dict]] = self._load()

    def _load(self) -> dict[str, dict[str, dict]]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()):
                return data
            raise ValueError("not an object of objects")
        except (OSError, ValueError) as error:
            log.warning("presets: %s is not readable (%s); starting without presets, the file is replaced on the "
                        "next save", self.path, error)
            return {}

    def list(self, client: str) -> dict[str, dict]:
        with self._lock:
            return dict(self._data.get(client, {}))

    def put(self, client: str, name: str, preset: dict) -> None:
        with self._lock:
            own = self._data.get(client, {})
            if name not in own:
                if len(own) >= MAX_PRESETS:
                    raise ValidationError([FieldProblem("name", name, f"must be one of your {MAX_PRESETS} presets "
                                                        "(the most a client may keep); delete one first")])
                if sum(len(v) for v in self._data.values()) >= MAX_TOTAL:
                    raise ValidationError([FieldProblem("name", name, f"cannot be added: the server holds its most "
                                                        f"presets ({MAX_TOTAL}) over all clients")])
            self._data[client] = {**own, name: preset}
            self._save()

    def delete(self, client: str, name: str) -> bool:
        with self._lock:
            own = self._data.get(client, {})
            if name not in own:
                return False
            self._data[client] = {k: v for k, v in own.items() if k != name}
            self._save()
            return True

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".presets-", suffix=".json")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as f:  # mkstemp: readable by its owner only
                json.dump(self._data, f, ensure_ascii=False, indent=1)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
