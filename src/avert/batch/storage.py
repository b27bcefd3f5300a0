"""Where a batch job's files go: a local folder, or any `pyarrow` filesystem URI (s3://, gs://, hdfs://, file://).

Files are written under a temporary name and moved into place, so a process killed mid-write leaves no file under
a final name, and a request written twice (a retried Ray task) leaves one file with the same bytes. The manifest
(`MANIFEST`, JSON Lines) is appended in place on a local folder (flushed and fsynced per chunk, the folder locked
by the running driver); filesystems that cannot append (object stores) get it rewritten whole.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from avert.errors import AvertError

MANIFEST = "manifest.jsonl"
IMAGES = "images"
TEMPORARY = ".tmp-"


def is_uri(out: str) -> bool:
    return "://" in out


class Storage:
    """Files of one job under `out` (a path or a URI); names are relative to it and made by avert only."""

    def __init__(self, out: str):
        self.out = out
        if is_uri(out):
            try:
                from pyarrow import fs
            except ImportError:
                raise AvertError(f"out: {out!r} is a URI; writing to one needs pyarrow (pip install "
                                 "'avert[ray]')") from None
            try:
                self.fs, self.root = fs.FileSystem.from_uri(out)
            except Exception as error:  # noqa: BLE001 - pyarrow's errors name the URI's problem
                raise AvertError(f"out: {out!r} is not a filesystem URI pyarrow can open ({error})") from None
            self.fs.create_dir(f"{self.root}/{IMAGES}", recursive=True)
        else:
            self.fs, self.root = None, str(Path(out).expanduser().resolve())
            try:
                Path(self.root, IMAGES).mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise AvertError(f"out: {out!r} cannot be made a folder ({error.strerror or error})") from None

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def write(self, name: str, data: bytes) -> None:
        """Write `data` to `name` atomically (temporary file, then a move)."""
        final = self.path(name)
        temporary = f"{final}{TEMPORARY}{uuid.uuid4().hex}"
        if self.fs is None:
            with open(temporary, "wb") as f:
                f.write(data)
            os.replace(temporary, final)
            return
        with self.fs.open_output_stream(temporary) as f:
            f.write(data)
        self.fs.move(temporary, final)

    def read(self, name: str) -> bytes | None:
        """The file's bytes, or None where there is none."""
        try:
            if self.fs is None:
                return Path(self.path(name)).read_bytes()
            with self.fs.open_input_stream(self.path(name)) as f:
                return f.read()
        except OSError:  # none there (or unreadable: the run then starts as if none were done)
            return None

    def remove_temporaries(self) -> int:
        """Delete what killed writers left behind (none can be running: a job's driver starts its writers after
        this); their requests are not in the manifest, so they are made again."""
        names = [n for n in self._names() if TEMPORARY in n]
        for name in names:
            if self.fs is None:
                Path(self.path(name)).unlink(missing_ok=True)
            else:
                self.fs.delete_file(self.path(name))
        return len(names)

    def _names(self) -> list[str]:
        """Every file name under the images folder (relative to `out`)."""
        if self.fs is None:
            return sorted(f"{IMAGES}/{p.name}" for p in Path(self.root, IMAGES).iterdir())
        from pyarrow import fs

        infos = self.fs.get_file_info(fs.FileSelector(self.path(IMAGES)))
        return sorted(f"{IMAGES}/{i.base_name}" for i in infos)


class Manifest:
    """The job's record, one JSON object a request: what is done (skipped when the job is run again) or failed."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self.rows: list[dict] = []
        self._handle = None
        if storage.fs is None:
            self._lock_local()  # before reading: what another run is writing is not read half-done
        text = storage.read(MANIFEST) or b""
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # the last line of a killed run may be cut short: its request is made again
            if isinstance(row, dict) and "hash" in row:
                self.rows.append(row)

    def _lock_local(self) -> None:
        import fcntl

        self._handle = open(self.storage.path(MANIFEST), "ab")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            raise AvertError(f"out: {self.storage.out!r} is in use by another avert batch run (its manifest is "
                             "locked); wait for it or give another --out") from None
        if self._handle.tell() and not text_ends_with_newline(self.storage.path(MANIFEST)):
            self._handle.write(b"\n")  # a cut last line stays on its own line

    def done(self) -> set[str]:
        return {r["hash"] for r in self.rows if r.get("status") == "done"}

    def append(self, rows: list[dict]) -> None:
        """Record `rows` durably before the next chunk starts (a request is done once its row is written)."""
        if not rows:
            return
        self.rows.extend(rows)
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
        if self._handle is not None:
            self._handle.write(text)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        else:
            self.storage.write(MANIFEST, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows).encode())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def text_ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
