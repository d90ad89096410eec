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

Whole or not at all: an answer's photo is written and its row changed inside
one write transaction, and the caller changes what derives from it (the store
view) before that transaction commits (`adding`, `removing`); any failure
rolls the row back and takes a photo it wrote away. What a crash can still
leave (a half-written `.partial`, a photo whose row never committed) is
cleaned the next time the store is opened for writing (`clean`).

Where (<collection>: the live name, shared by the collections built to replace it):
$CATALOGUE_FEEDBACK_PATH/<collection> when set; else `feedback/<collection>`
inside an embedded store, or beside the default embedded store for a Qdrant server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from indexer import settings
from indexer.errors import OptionError, StoreUnavailable, first_line

log = logging.getLogger("catalogue.feedback")
PHOTOS = "photos"
DATABASE = "feedback.sqlite"
ORIGINS = ("cli", "api", "page")
#: Entry ids are SQLite integers: above this one, no entry can exist.
MAX_ID = 2**63 - 1
#: Beyond any photo the decoder accepts, and within every integer type a box passes through.
MAX_COORDINATE = 2**31 - 1
#: Suffixes of the files a writer keeps beside photos/ while its transaction is open.
PARTIAL, REMOVING = ".partial", ".removing"
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
        """The feedback store of `collection` in `store` (an open embedded store or server connection); a
        collection built to replace the live one (`indexer sync --into`) shares the live name's."""
        collection = store.feedback_name(collection)
        explicit = settings.get("feedback_path")
        if explicit is not None:
            return cls(explicit / collection)
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
        with self.adding(data, product_id=product_id, answered=answered, box=box, origin=origin, by=by) as added:
            return added

    @contextlib.contextmanager
    def adding(
        self,
        data: bytes,
        *,
        product_id: str | None,
        answered: list[str],
        box: tuple[int, int, int, int] | None,
        origin: str,
        by: str | None = None,
    ) -> Iterator[tuple[Feedback, Feedback | None]]:
        """`add`, yielding (the new entry, the one it replaces) before the log commits, so that the caller
        changes what derives from the entry inside; an exception there, or a commit that fails, leaves
        the log and the photos as they were."""
        if origin not in ORIGINS:
            raise ValueError(f"origin {origin!r}")
        sha = hashlib.sha256(data).hexdigest()
        name = sha + _suffix(data)
        created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        wrote = False
        try:
            with self._db(write=True) as db:
                row = db.execute("SELECT * FROM feedback WHERE sha256 = ?", (sha,)).fetchone()
                replaced = _entry(row, self.folder) if row else None
                wrote = self._write_photo(name, data)  # under the write lock: no other writer counts on it yet
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
                yield _entry(added, self.folder), replaced
        except BaseException:
            if wrote:
                with contextlib.suppress(OSError):
                    (self.folder / PHOTOS / name).unlink()
            raise

    def remove(self, entry_id: int) -> Feedback | None:
        """Forget an entry and its photo; the entry, or None if there was none."""
        with self.removing(entry_id) as entry:
            return entry

    @contextlib.contextmanager
    def removing(self, entry_id: int) -> Iterator[Feedback | None]:
        """`remove`, yielding the entry (or None) before the log commits, so that the caller removes what
        derives from it inside; an exception there, or a commit that fails, keeps the entry and its photo."""
        if not (self.folder / DATABASE).is_file():
            yield None
            return
        photo = aside = None
        try:
            with self._db(write=True) as db:
                row = db.execute("SELECT * FROM feedback WHERE id = ?", (entry_id,)).fetchone()
                entry = _entry(row, self.folder) if row else None
                if entry is not None:
                    db.execute("DELETE FROM feedback WHERE id = ?", (entry_id,))
                    photo, aside = entry.photo_path, entry.photo_path.with_name(f".{entry.photo}{REMOVING}")
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(photo, aside)  # set aside, not deleted, until the row is gone for good
                yield entry
        except BaseException:
            if aside is not None:
                with contextlib.suppress(OSError):  # else the next `clean` puts it back
                    os.replace(aside, photo)
            raise
        if aside is not None:
            with contextlib.suppress(OSError):
                aside.unlink()

    def clean(self) -> dict[str, int]:
        """What a crash or a full disk left in photos/, resolved by the log: half-written `.partial`
        files and photos without a row go; a photo set aside by a removal whose row survived comes back.
        Run under the write lock, so no writer is between its photo and its commit."""
        folder = self.folder / PHOTOS
        done = {"partial": 0, "orphan": 0, "kept": 0}
        if not (self.folder / DATABASE).is_file() or not folder.is_dir():
            return done
        with self._db(write=True) as db:
            logged = {row[0] for row in db.execute("SELECT photo FROM feedback")}
            for path in folder.iterdir():
                name = path.name
                if name.endswith(REMOVING) and name[1 : -len(REMOVING)] in logged:
                    os.replace(path, folder / name[1 : -len(REMOVING)])
                    done["kept"] += 1
                    continue
                kind = "partial" if name.endswith((PARTIAL, REMOVING)) else None if name in logged else "orphan"
                if kind is not None and path.is_file():
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    done[kind] += 1
        if done["partial"] or done["orphan"] or done["kept"]:
            log.warning(
                "feedback store %s: removed %d unfinished file(s) and %d photo(s) without a log entry (left by a "
                "crash or a full disk), put back %d photo(s) whose removal did not commit",
                self.folder,
                done["partial"],
                done["orphan"],
                done["kept"],
            )
        return done

    def _write_photo(self, name: str, data: bytes) -> bool:
        """Whole or not at all: a crash leaves no half photo under its final name; whether it wrote one."""
        folder = self.folder / PHOTOS
        target = folder / name
        if target.is_file() and target.stat().st_size == len(data):
            return False
        partial = folder / f".{name}.{uuid.uuid4().hex}{PARTIAL}"  # one per writer: two may write one photo at once
        try:
            folder.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(data)
            os.replace(partial, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise StoreUnavailable(f"cannot write to the feedback store {self.folder}: {first_line(exc)}") from None
        return True

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
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            self._commit(db)
        except sqlite3.OperationalError as exc:  # full, locked, read-only, I/O: the file itself is fine
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise StoreUnavailable(
                f"the feedback store {self.folder / DATABASE} is unavailable: {first_line(exc)}; "
                "free some space (or wait for the other writer) and run the same command again"
            ) from None
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(
                f"the feedback store {self.folder / DATABASE} cannot be used: {first_line(exc)}; "
                f"move the folder {self.folder} aside (photos and log together) or restore it from a backup"
            ) from None
        finally:
            db.close()

    @staticmethod
    def _commit(db: sqlite3.Connection) -> None:
        """The moment an answer is recorded (a seam: tests make it fail as a full disk would)."""
        db.execute("COMMIT")


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
    """A box as 'x0,y0,x1,y1' or four numbers (pixels, rounded); OptionError when it is not one: four
    finite numbers from 0 up, x0 < x1 and y0 < y1. Whether it fits the photo is the caller's check."""
    if value is None or value == "":
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    box = tuple(_coordinate(v) for v in parts)
    if len(box) != 4 or None in box or box[2] <= box[0] or box[3] <= box[1]:
        shown = value if isinstance(value, str) else ",".join(map(str, value))
        raise OptionError(f"box {shown[:80]!r}: expected x0,y0,x1,y1, four numbers of pixels from 0 up with x0 < x1 and y0 < y1")
    return box


def _coordinate(value) -> int | None:
    """One box coordinate in pixels, or None: not a number, not finite, negative or beyond any photo."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number) or not 0 <= number <= MAX_COORDINATE:
        return None
    return round(number)
