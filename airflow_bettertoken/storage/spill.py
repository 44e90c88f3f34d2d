"""The spill directory: where a paid image waits when it could not be written to S3.

It is the only local state the provider keeps, and only after an upload failed.
A rerun on the same worker finds the image by the digest of its inputs and uploads
it instead of paying for it again.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from airflow_bettertoken.protocol.result import EditResult

__all__ = ["DEFAULT_SPILL_DIR", "SpillDir"]

DEFAULT_SPILL_DIR = os.path.join(tempfile.gettempdir(), "airflow-bettertoken-spill")


class SpillDir:
    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path or DEFAULT_SPILL_DIR)

    def png_path(self, digest: str) -> Path:
        return self.path / f"{digest}.png"

    def save(self, digest: str, result: EditResult) -> Path:
        """Write the PNG and its record, each atomically, so a crash leaves no half file."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._write_atomic(self.path / f"{digest}.json", json.dumps(result.to_spill_record()).encode())
        target = self.png_path(digest)
        self._write_atomic(target, result.png)
        return target

    def load(self, digest: str) -> EditResult | None:
        """The kept result, or None; its PNG is checked again by the caller before it is uploaded."""
        try:
            png = self.png_path(digest).read_bytes()
            record = json.loads((self.path / f"{digest}.json").read_text())
            return EditResult.from_spill_record(png, record)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def discard(self, digest: str) -> None:
        for suffix in (".png", ".json"):
            (self.path / f"{digest}{suffix}").unlink(missing_ok=True)

    @staticmethod
    def _write_atomic(target: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
