"""Find the catalogue images under a DAM folder and say which product each one shows.

The product id is the file name's stem, or the first group of `id_pattern`
when it matches (so `CODE_2.jpg` and `CODE.jpg` can both be `CODE`), or what
the manifest says. Any text is a product id, '/', '%', '#' and '..' included
(the brand's codes are theirs; the API and the page carry them encoded); a
manifest id over `MAX_PRODUCT_ID` characters is refused, as the API would
refuse it. Hidden files and folders are skipped: `._x.jpg` AppleDouble
files and `.thumbnails/` are not catalogue images. Everything else that is
not indexed is said: see `scan`.
"""

from __future__ import annotations

import csv
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from indexer.errors import BadInputError
from indexer.images import IMAGE_SUFFIXES, max_file_bytes
from indexer.store.schema import MAX_PRODUCT_ID

#: Image formats PIL cannot read here: counted as skipped, with what to do.
UNSUPPORTED_SUFFIXES = {
    ".heic": "HEIC is not supported; convert it to JPEG (e.g. heif-convert, or export as JPEG)",
    ".heif": "HEIF is not supported; convert it to JPEG (e.g. heif-convert, or export as JPEG)",
    ".avif": "AVIF is not supported; convert it to JPEG or WebP",
    ".tif": "TIFF is not indexed; convert it to JPEG or PNG",
    ".tiff": "TIFF is not indexed; convert it to JPEG or PNG",
}

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
            end = reader.line_num
            for raw in reader:
                start, end = end + 1, reader.line_num  # a quoted cell may span lines: name the row's first
                row = {rename.get(k, k): (v or "").strip() for k, v in raw.items() if k is not None}
                product_id = row.get(PRODUCT_COLUMN) or ""
                if len(product_id) > MAX_PRODUCT_ID:
                    raise BadInputError(
                        f"manifest {path} line {start}: product id {product_id[:40]!r}... is {len(product_id)} characters "
                        f"long; a product id is at most {MAX_PRODUCT_ID}; fix the manifest and run again (nothing was changed)"
                    )
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


@dataclass
class Scan:
    """What a DAM folder holds: the images to index, the files that should be images but cannot be
    (`failed`: reported, exit 7, a point they had is kept), and what is left out on purpose (`skipped`)."""

    images: list[SourceImage]
    failed: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why); print with display_path
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def paths(self) -> set[str]:
        """Every path sync must not treat as vanished: the images and the files that failed."""
        return {image.relative for image in self.images} | {path for path, _ in self.failed}

    def shard(self, index: int, count: int) -> Scan:
        """The part of the scan shard `index` of `count` owns (by point id, see `indexer.store.shard_of`)."""
        from indexer.store.schema import shard_of

        def own(path: str) -> bool:
            return shard_of(_point_id(path), count) == index

        return Scan(
            images=[image for image in self.images if own(image.relative)],
            failed=[item for item in self.failed if own(item[0])],
            skipped=[item for item in self.skipped if own(item[0])],
        )


def scan(root: Path, *, id_pattern: re.Pattern | None = None, manifest: Manifest | None = None) -> Scan:
    """Every image under `root`, sorted by relative path, and what could not or should not be indexed.

    Symbolic links to files inside `root` are followed; links leading out of
    it, and links to folders, are not (skipped, and said). Broken links,
    FIFOs, devices, files above the size limit and names that are not valid
    UTF-8 fail, each with its reason.
    """
    if not root.exists():
        raise BadInputError(f"{root}: no such folder")
    if not root.is_dir():
        raise BadInputError(f"{root}: not a folder (give the DAM folder to sync)")
    real_root = root.resolve()
    found = Scan(images=[])
    for folder, subfolders, files in os.walk(root, onerror=_unreadable_folder):
        for name in subfolders:
            if not name.startswith(".") and os.path.islink(os.path.join(folder, name)):
                found.skipped.append((_relative(root, folder, name) + "/", "symbolic link to a folder (not followed)"))
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in files:
            suffix = Path(name).suffix.lower()
            if name.startswith("."):
                continue
            relative = _relative(root, folder, name)
            if suffix in UNSUPPORTED_SUFFIXES:
                found.skipped.append((relative, UNSUPPORTED_SUFFIXES[suffix]))
                continue
            if suffix not in IMAGE_SUFFIXES:
                continue
            problem, image = _source(root, real_root, Path(folder) / name, relative, id_pattern, manifest)
            if image is not None:
                found.images.append(image)
            elif problem[0] == "skip":
                found.skipped.append((relative, problem[1]))
            else:
                found.failed.append((relative, problem[1]))
    found.images.sort(key=lambda image: image.relative)
    found.failed.sort()
    found.skipped.sort()
    return found


def _source(root, real_root, path: Path, relative: str, id_pattern, manifest) -> tuple[tuple[str, str], SourceImage | None]:
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        return ("fail", "file name is not valid UTF-8; rename the file"), None
    if path.is_symlink():
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):  # missing target, or a loop of links
            return ("fail", "broken symbolic link"), None
        if not target.is_relative_to(real_root):
            return ("skip", "symbolic link leading out of the DAM folder (not followed)"), None
    try:
        info = path.stat()
    except OSError as exc:
        return ("fail", f"cannot read ({exc.strerror or exc})"), None
    if not stat.S_ISREG(info.st_mode):
        return ("fail", "not a regular file; only image files are read"), None
    if info.st_size > max_file_bytes():
        return (
            "fail",
            f"larger than the {max_file_bytes() // 2**20:,} MB file limit; raise CATALOGUE_MAX_FILE_MB to accept it",
        ), None
    product_id = product_id_from_name(relative, id_pattern)
    row = manifest.row_for(relative, product_id) if manifest else {}
    product_id = row.get(PRODUCT_COLUMN) or product_id
    meta = {k: v for k, v in row.items() if k not in (FILE_COLUMN, PRODUCT_COLUMN, CATEGORY_COLUMN) and v}
    image = SourceImage(
        path=path,
        relative=relative,
        product_id=product_id,
        size=info.st_size,
        mtime_ns=info.st_mtime_ns,
        category=row.get(CATEGORY_COLUMN) or None,
        meta=meta,
    )
    return ("ok", ""), image


def _point_id(path: str) -> str:
    from indexer.store.schema import point_id

    return point_id(path.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def _relative(root: Path, folder: str, name: str) -> str:
    return (Path(folder) / name).relative_to(root).as_posix()


def display_path(path: str) -> str:
    """A path safe to print on one line: undecodable bytes as \\xNN, control characters escaped."""
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def compile_id_pattern(pattern: str | None) -> re.Pattern | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise BadInputError(f"--id-pattern {pattern!r} is not a valid regular expression ({exc})") from None
