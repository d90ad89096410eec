"""Find the catalogue images under a DAM folder and say which product each one shows.

The product id is the file name's stem, or the first group of `id_pattern`
when it matches (so `CODE_2.jpg` and `CODE.jpg` can both be `CODE`), or what
the manifest says. Hidden files and folders are skipped: `._x.jpg` AppleDouble
files and `.thumbnails/` are not catalogue images.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from indexer.errors import BadInputError
from indexer.images import IMAGE_SUFFIXES

#: Manifest columns with a meaning; every other column goes to the `meta` payload.
FILE_COLUMN = "file"
PRODUCT_COLUMN = "product_id"
CATEGORY_COLUMN = "category"


@dataclass(frozen=True)
class SourceImage:
    """One catalogue image on disk and the metadata it will carry."""

    path: Path
    relative: str  # '/'-separated, relative to the DAM root: the image's identity
    product_id: str
    size: int
    mtime_ns: int
    category: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Manifest:
    """Rows keyed by file (relative path or bare name) or by product id."""

    by_file: dict[str, dict[str, str]] = field(default_factory=dict)
    by_product: dict[str, dict[str, str]] = field(default_factory=dict)

    def row_for(self, relative: str, product_id: str) -> dict[str, str]:
        row = dict(self.by_product.get(product_id, {}))
        row.update(self.by_file.get(relative) or self.by_file.get(relative.rsplit("/", 1)[-1]) or {})
        return row


def read_manifest(path: Path, rename: dict[str, str] | None = None) -> Manifest:
    """Read a CSV with a `file` or a `product_id` column (after `rename`)."""
    rename = rename or {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [rename.get(c, c) for c in (reader.fieldnames or [])]
            if FILE_COLUMN not in columns and PRODUCT_COLUMN not in columns:
                raise BadInputError(
                    f"manifest {path}: needs a '{FILE_COLUMN}' or '{PRODUCT_COLUMN}' column "
                    f"(found: {', '.join(reader.fieldnames or []) or 'none'}); rename one with --manifest-column OLD=NEW"
                )
            manifest = Manifest()
            for raw in reader:
                row = {rename.get(k, k): (v or "").strip() for k, v in raw.items() if k is not None}
                if row.get(FILE_COLUMN):
                    manifest.by_file[row[FILE_COLUMN].replace("\\", "/")] = row
                elif row.get(PRODUCT_COLUMN):
                    manifest.by_product[row[PRODUCT_COLUMN]] = row
            return manifest
    except FileNotFoundError:
        raise BadInputError(f"manifest {path}: no such file") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"manifest {path}: not a readable UTF-8 CSV ({exc})") from None


def product_id_from_name(relative: str, id_pattern: re.Pattern | None) -> str:
    stem = Path(relative).stem
    if id_pattern is not None:
        match = id_pattern.search(stem)
        if match:
            return match.groupdict().get("id") or (match.group(1) if match.groups() else match.group(0))
    return stem


def _unreadable_folder(error: OSError) -> None:
    # Skipping it would make its images look deleted and sync would drop their points.
    raise BadInputError(
        f"cannot read folder {error.filename}: {error.strerror or error}; fix its permissions or mount "
        "and run again (nothing was changed)"
    )


def scan(root: Path, *, id_pattern: re.Pattern | None = None, manifest: Manifest | None = None) -> list[SourceImage]:
    """Every image under `root`, sorted by relative path."""
    if not root.exists():
        raise BadInputError(f"{root}: no such folder")
    if not root.is_dir():
        raise BadInputError(f"{root}: not a folder (give the DAM folder to sync)")
    found = []
    for folder, subfolders, files in os.walk(root, onerror=_unreadable_folder):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in files:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            path = Path(folder) / name
            try:
                stat = path.stat()
            except OSError:
                continue  # vanished or a broken link while walking; the next sync sees the truth
            relative = path.relative_to(root).as_posix()
            product_id = product_id_from_name(relative, id_pattern)
            row = manifest.row_for(relative, product_id) if manifest else {}
            product_id = row.get(PRODUCT_COLUMN) or product_id
            meta = {k: v for k, v in row.items() if k not in (FILE_COLUMN, PRODUCT_COLUMN, CATEGORY_COLUMN) and v}
            found.append(
                SourceImage(
                    path=path,
                    relative=relative,
                    product_id=product_id,
                    size=stat.st_size,
                    mtime_ns=stat.st_mtime_ns,
                    category=row.get(CATEGORY_COLUMN) or None,
                    meta=meta,
                )
            )
    found.sort(key=lambda image: image.relative)
    return found


def compile_id_pattern(pattern: str | None) -> re.Pattern | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise BadInputError(f"--id-pattern {pattern!r} is not a valid regular expression ({exc})") from None
