"""Models by name: the default model and the entries of the configured models folder.

A request names a model; the name is looked up in this table and never used as a path, so nothing a
client sends reaches the file system (A1111 #12822, ComfyUI #12285 were path traversals through names).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from avert.errors import FieldProblem, ModelLoadError, ValidationError
from avert.models.components import Components
from avert.models.default import resolve_model_path
from avert.models.loader import model_name
from avert.models.store import get_model


@dataclass(frozen=True)
class ModelEntry:
    """A servable model: the name clients use and the path the operator configured."""

    name: str
    path: Path

    @property
    def filename(self) -> str:
        return self.path.name


class ModelRegistry:
    """The models clients may choose, by name; loads are serialised and cached by `avert.models.store`."""

    def __init__(self, default: str | None = None, models_dir: Path | None = None):
        self.models_dir = Path(models_dir).expanduser() if models_dir else None
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._default_spec = default
        self._entries: dict[str, ModelEntry] = {}
        self.refresh()
        self.default_name = self._default_entry(default).name

    def refresh(self) -> None:
        """Rescan the models folder (A1111's refresh-checkpoints); the default model always stays."""
        if self.models_dir and not self.models_dir.is_dir():
            raise ModelLoadError(f"models-dir: {str(self.models_dir)!r} is not a folder")
        entries = {e.name: e for e in _scan(self.models_dir)} if self.models_dir else {}
        with self._lock:
            kept = {n: e for n, e in self._entries.items() if n not in entries and self._is_default(e)}
            self._entries = {**kept, **entries}

    def _is_default(self, entry: ModelEntry) -> bool:
        return getattr(self, "default_name", None) == entry.name

    def _default_entry(self, spec: str | None) -> ModelEntry:
        if spec and spec in self._entries:
            return self._entries[spec]
        path = resolve_model_path(spec)
        name = model_name(path)
        if not path.exists():
            raise ModelLoadError(f"model: {spec!r} is neither a model in --models-dir nor an existing path")
        entry = ModelEntry(name, path)
        self._entries.setdefault(name, entry)
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._entries))

    def entry(self, name: object, field: str = "model") -> ModelEntry:
        """The entry for a client-given name, or a ValidationError naming `field` and the names allowed."""
        with self._lock:
            found = self._entries.get(name) if isinstance(name, str) else None
        if found is None:
            raise ValidationError([FieldProblem(field, name, "must be one of the served models: "
                                                + ", ".join(self.names()))])
        return found

    def components(self, name: str) -> Components:
        """The loaded model (one load at a time; the store caches loaded models)."""
        entry = self.entry(name)
        with self._load_lock:
            return get_model(entry.path)


def _scan(folder: Path) -> list[ModelEntry]:
    """Diffusers folders and single .safetensors files directly inside `folder` (pickles are not served)."""
    if not folder.is_dir():
        return []
    found = []
    for child in sorted(folder.iterdir()):
        folder_model = child.is_dir() and (child / "model_index.json").is_file()
        if folder_model or (child.is_file() and child.suffix == ".safetensors"):
            found.append(ModelEntry(model_name(child), child))
    return found
