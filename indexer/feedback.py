"""The feedback store: store photos that staff confirmed as a product, or said are not in the catalogue.

One folder per collection, beside the store:

    photos/<sha256>.<ext>   each photo, byte for byte as it was sent
    feedback.sqlite         one row per photo: what the search answered, what staff said, where, when

The log is the truth. The collection's store views (search/feedback.py) are
derived from it and can be rebuilt from it at any time (after `indexer sync
--reindex`, or a new model). It is also the brand's own labelled set: `search
eval --feedback` measures on it.

One row per photo: a second answer for the same photo (by content hash)
replaces the first, so a correction overrides a wrong confirmation.
SQLite keeps concurrent writers (the server, an administrator's CLI) safe.

Where: $CATALOGUE_FEEDBACK_PATH/<collection> when set; else `feedback/<collection>`
inside an embedded store, or beside the default embedded store for a Qdrant server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from indexer.errors import BadInputError, StoreUnavailable, first_line

FEEDBACK_ENV = "CATALOGUE_FEEDBACK_PATH"
PHOTOS = "photos"
DATABASE = "feedback.sqlite"
ORIGINS = ("cli", "api", "page")
#: What staff said about the search's answer.
CONFIRMED, CORRECTED, NOT_IN_CATALOGUE = "confirmed", "corrected", "not in catalogue"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL UNIQUE,
    photo TEXT NOT NULL,
    product_id TEXT,
    answered TEXT NOT NULL,
    box TEXT,
    created TEXT NOT NULL,
    origin TEXT NOT NULL,
    by TEXT
);
CREATE INDEX IF NOT EXISTS feedback_product ON feedback (product_id);
"""


@dataclass(frozen=True)
class Feedback:
    """One photo and what staff said it shows."""

    id: int
    sha256: str
    photo: str  # file name under photos/
    product_id: str | None  # None: the product is not in the catalogue
    answered: tuple[str, ...]  # the products the search answered, best first
    box: tuple[int, int, int, int] | None  # where the product is in the photo (x0, y0, x1, y1), if known
    created: str  # ISO 8601, UTC
    origin: str  # cli, api or page
    by: str | None = None  # who answered (a staff or device id), when the caller says
    folder: Path | None = None  # the feedback store it was read from

    @property
    def photo_path(self) -> Path:
        return Path(self.folder or ".") / PHOTOS / self.photo

    @property
    def verdict(self) -> str:
        if self.product_id is None:
            return NOT_IN_CATALOGUE
        return CONFIRMED if self.answered[:1] == (self.product_id,) else CORRECTED

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "product_id": self.product_id,
            "verdict": self.verdict,
            "answered": list(self.answered),
            "box": None if self.box is None else list(self.box),
            "sha256": self.sha256,
            "photo": f"{PHOTOS}/{self.photo}",
            "created": self.created,
            "origin": self.origin,
            "by": self.by,
        }


class FeedbackLog:
    """The photos and the log of one collection's feedback."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @classmethod
    def of(cls, store, collection: str) -> FeedbackLog:
        """The feedback store of `collection` in `store` (an open embedded store or server connection)."""
        explicit = os.environ.get(FEEDBACK_ENV)
        if explicit:
            return cls(Path(explicit).expanduser() / collection)
        root = getattr(store, "root", None)
        if root is not None:  # embedded: inside the store, so it moves and is backed up with it
            return cls(Path(root) / "feedback" / collection)
        from indexer.store import default_store_path

        server = re.sub(r"[^A-Za-z0-9.-]+", "_", store.location.split("://", 1)[-1]).strip("_")
        return cls(default_store_path().parent / "feedback" / server / collection)

    # -- reading -----------------------------------------------------------------------------

    def entries(self, product_id: str | None = None, *, newest_first: bool = True) -> list[Feedback]:
        if not (self.folder / DATABASE).is_file():
            return []
        where, args = ("WHERE product_id = ?", (product_id,)) if product_id is not None else ("", ())
        order = "DESC" if newest_first else "ASC"
        with self._db() as db:
            rows = db.execute(f"SELECT * FROM feedback {where} ORDER BY id {order}", args).fetchall()
        return [_entry(row, self.folder) for row in rows]

    def get(self, entry_id: int) -> Feedback | None:
        if not (self.folder / DATABASE).is_file():
            return None
        with self._db() as db:
            row = db.execute("SELECT * FROM feedback WHERE id = ?", (entry_id,)).fetchone()
        return _entry(row, self.folder) if row else None

    def __len__(self) -> int:
        if not (self.folder / DATABASE).is_file():
            return 0
        with self._db() as db:
            return int(db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    # -- writing -----------------------------------------------------------------------------

    def add(
        self,
        data: bytes,
        *,
        product_id: str | None,
        answered: list[str],
        box: tuple[int, int, int, int] | None,
        origin: str,
        by: str | None = None,
    ) -> tuple[Feedback, Feedback | None]:
        """Keep the photo and what staff said; (the new entry, the entry it replaced for the same photo)."""
        if origin not in ORIGINS:
            raise ValueError(f"origin {origin!r}")
        sha = hashlib.sha256(data).hexdigest()
        name = sha + _suffix(data)
        self._write_photo(name, data)
        created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        with self._db(write=True) as db:
            row = db.execute("SELECT * FROM feedback WHERE sha256 = ?", (sha,)).fetchone()
            replaced = _entry(row, self.folder) if row else None
            if replaced is not None:
                db.execute("DELETE FROM feedback WHERE id = ?", (replaced.id,))
            cursor = db.execute(
                "INSERT INTO feedback (sha256, photo, product_id, answered, box, created, origin, by) VALUES (?,?,?,?,?,?,?,?)",
                (
                    sha,
                    name,
                    product_id,
                    json.dumps(list(answered)),
                    None if box is None else json.dumps(list(box)),
                    created,
                    origin,
                    by,
                ),
            )
            # Read back in the same transaction: once it ends, a later answer for the photo may replace this one.
            added = db.execute("SELECT * FROM feedback WHERE id = ?", (cursor.lastrowid,)).fetchone()
        return _entry(added, self.folder), replaced

    def remove(self, entry_id: int) -> Feedback | None:
        """Forget an entry and its photo; the entry, or None if there was none."""
        entry = self.get(entry_id)
        if entry is None:
            return None
        with self._db(write=True) as db:
            db.execute("DELETE FROM feedback WHERE id = ?", (entry_id,))
        with contextlib.suppress(FileNotFoundError):
            entry.photo_path.unlink()
        return entry

    def _write_photo(self, name: str, data: bytes) -> None:
        """Whole or not at all: a crash leaves no half photo under its final name."""
        folder = self.folder / PHOTOS
        target = folder / name
        if target.is_file() and target.stat().st_size == len(data):
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            partial = folder / f".{name}.{uuid.uuid4().hex}.partial"  # one per writer: two may write one photo at once
            partial.write_bytes(data)
            os.replace(partial, target)
        except OSError as exc:
            raise StoreUnavailable(f"cannot write to the feedback store {self.folder}: {first_line(exc)}") from None

    @contextlib.contextmanager
    def _db(self, *, write: bool = False):
        """One transaction; a writing one takes the write lock at once, so that two answers for one
        photo arriving together (two tills, the server and the CLI) replace each other in turn."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.folder / DATABASE, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open the feedback store {self.folder}: {first_line(exc)}") from None
        db.row_factory = sqlite3.Row
        try:
            db.executescript(_SCHEMA)
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(
                f"the feedback store {self.folder / DATABASE} cannot be used: {first_line(exc)}; "
                "move it aside (its photos stay in photos/) or restore it from a backup"
            ) from None
        finally:
            db.close()


def _entry(row: sqlite3.Row, folder: Path) -> Feedback:
    box = json.loads(row["box"]) if row["box"] else None
    return Feedback(
        id=int(row["id"]),
        sha256=row["sha256"],
        photo=row["photo"],
        product_id=row["product_id"],
        answered=tuple(json.loads(row["answered"])),
        box=None if box is None else tuple(int(v) for v in box),
        created=row["created"],
        origin=row["origin"],
        by=row["by"],
        folder=folder,
    )


def _suffix(data: bytes) -> str:
    """The photo's file extension, from its first bytes."""
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".img"


def parse_box(value: str | list | tuple | None) -> tuple[int, int, int, int] | None:
    """A box as 'x0,y0,x1,y1' or four numbers; BadInputError when it is not one."""
    if value is None or value == "":
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        box = tuple(round(float(v)) for v in parts)
    except (TypeError, ValueError):
        box = ()
    if len(box) != 4 or box[0] < 0 or box[1] < 0 or box[2] <= box[0] or box[3] <= box[1]:
        raise BadInputError(f"box {value!r}: expected x0,y0,x1,y1 with x0 < x1 and y0 < y1, in pixels of the photo")
    return box
