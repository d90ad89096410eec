"""The fault suite: bad input through the real CLI is one line and an exit code, never a traceback.

Each test builds its situation itself (files, names, options) and checks the
exit code, the one-line message, and what the store holds afterwards.
"""

from __future__ import annotations

import pytest
from conftest import all_points

RED = ("generated", "RED-BAG.png")


def one_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "option",
    [
        ("--alpha", "nan"),
        ("--alpha", "inf"),
        ("--alpha", "-1"),
        ("--threshold", "inf"),
        ("--threshold", "nan"),
        ("--min-confidence", "nan"),
        ("--min-confidence", "2"),
        ("--top-k", "0"),
        ("--top-k", "1000000"),
        ("--filter", "a[=1"),
        ("--filter", "category"),
        ("--filter", "=x"),
        ("--filter", "meta..x=1"),
    ],
)
def test_bad_search_options_are_refused_up_front(synced, cli, dam, store, option, encode_calls):
    result = cli("search", "image", dam.joinpath(*RED), "--qdrant-path", store, *option)
    message = one_line(result, 2)
    assert option[0].lstrip("-").replace("-", "_") in message.replace("-", "_") or "filter" in message
    assert encode_calls == []  # refused before any model ran


@pytest.mark.parametrize("name", ["../evil", "a/b", "", "x" * 300, ".hidden", "a b"])
def test_bad_collection_names_are_refused_before_anything_loads(cli, dam, store, tiny_clip, name, encode_calls):
    for command in (("indexer", "sync", dam, "--model", tiny_clip), ("search", "image", dam.joinpath(*RED))):
        result = cli(*command, "--qdrant-path", store, "--collection", name)
        one_line(result, 2)
    assert encode_calls == []


def test_qdrant_path_from_the_environment_expands_the_home_folder(cli, dam, tmp_path, tiny_clip, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CATALOGUE_QDRANT_PATH", "~/stores/q")
    result = cli("indexer", "sync", dam, "--model", tiny_clip)
    assert result.exit_code == 0, result.output
    assert len(all_points(str(tmp_path / "stores" / "q"))) == 16
    assert not (tmp_path / "~").exists()


# -- files the DAM should not hold, each alone among good ones -----------------------------------

ORIGINAL = 16  # images of the `dam` fixture


def sync_json(cli, dam, store, *args):
    import json

    result = cli("indexer", "sync", dam, "--qdrant-path", store, "--json", *args)
    assert "Traceback" not in result.output
    return result, json.loads(result.stdout)


def stored_paths(store) -> set[str]:
    return {p.payload["path"] for p in all_points(store)}


def failure_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("failed: ")]


def test_a_file_name_that_is_not_utf8_fails_alone_and_the_rest_is_indexed(cli, dam, store, tiny_clip):
    import os

    good = (dam / "M3550HLEZJM900.jpeg").read_bytes()
    with open(os.fsencode(dam) + b"/05\xff\xfe.jpg", "wb") as handle:
        handle.write(good)
    for _ in range(2):  # and not forever stuck: the next run says the same and indexes the rest
        result, report = sync_json(cli, dam, store, "--model", tiny_clip)
        assert result.exit_code == 7
        assert failure_lines(result) == ["failed: 05\\xff\\xfe.jpg: file name is not valid UTF-8; rename the file"]
        assert report["failed"] == [{"path": "05\\xff\\xfe.jpg", "error": "file name is not valid UTF-8; rename the file"}]
        assert len(stored_paths(store)) == ORIGINAL
    _, dry = sync_json(cli, dam, store, "--dry-run")
    assert len(dry["failed"]) == 1


def test_names_with_newlines_cannot_forge_output_lines(cli, dam, store, tiny_clip):
    (dam / "fine\nfailed: forged.jpg").write_bytes((dam / "M3550HLEZJM900.jpeg").read_bytes())
    (dam / "bad\rname.jpg").write_text("not an image")
    result = cli("indexer", "sync", dam, "--qdrant-path", store, "--model", tiny_clip)
    assert result.exit_code == 7
    assert failure_lines(result) == ["failed: bad\\rname.jpg: not an image PIL can read (jpg, png, webp expected)"]
    assert not any("forged" in line for line in result.output.splitlines() if line.startswith("failed"))
    assert "fine\nfailed: forged.jpg" in stored_paths(store)  # a legal name: indexed as it is


def test_thin_and_tiny_images_fail_alone(cli, dam, store, tiny_clip):
    from PIL import Image

    Image.new("L", (100000, 1), 128).save(dam / "strip.png")  # a few hundred bytes
    Image.new("RGB", (2, 300)).save(dam / "needle.png")
    Image.new("RGB", (3000, 100)).save(dam / "banner.png")
    result, report = sync_json(cli, dam, store, "--model", tiny_clip)
    assert result.exit_code == 7
    reasons = {f["path"]: f["error"] for f in report["failed"]}
    assert set(reasons) == {"strip.png", "needle.png", "banner.png"}
    assert "too small" in reasons["strip.png"] and "too elongated" in reasons["banner.png"]
    assert len(failure_lines(result)) == 3 and len(stored_paths(store)) == ORIGINAL


def test_search_answers_the_good_photos_beside_a_thin_one(synced, cli, dam, store, tmp_path):
    import json

    from PIL import Image

    Image.new("RGB", (200, 1)).save(tmp_path / "line.png")
    result = cli(
        "search", "image", tmp_path / "line.png", dam.joinpath(*RED), "--qdrant-path", store, "--json", "--locate", "none"
    )
    assert result.exit_code == 7  # some photos failed
    assert [line for line in result.stderr.splitlines() if line.startswith("Error")] == [
        f"Error: {tmp_path / 'line.png'}: 200x1 pixels is too small; at least 16 pixels a side"
    ]
    assert [entry["matches"][0]["product_id"] for entry in json.loads(result.stdout)] == ["RED-BAG"]


def test_special_files_are_reported_not_read(dam, store, tiny_clip, tmp_path):
    """A FIFO, a link to /dev/zero, a huge file, broken links and a link loop: a real process, which must not hang."""
    import json
    import os
    import subprocess
    import sys

    os.mkfifo(dam / "pipe.jpg")
    (dam / "zero.jpg").symlink_to("/dev/zero")
    with open(dam / "huge.jpg", "wb") as handle:
        handle.truncate(3 * 2**20)  # sparse: costs nothing on disk
    (dam / "broken.jpg").symlink_to(dam / "no-such-file.jpg")
    (dam / "loop-a.jpg").symlink_to(dam / "loop-b.jpg")
    (dam / "loop-b.jpg").symlink_to(dam / "loop-a.jpg")
    (dam / "alias.jpeg").symlink_to(dam / "M3550HLEZJM900.jpeg")  # inside the DAM: followed
    (tmp_path / "elsewhere").mkdir()
    (dam / "linked-folder").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((dam / "M3550HLEZJM900.jpeg").read_bytes())
    (dam / "outside.jpg").symlink_to(outside)
    (dam / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic")
    done = subprocess.run(
        [sys.executable, "-m", "catalogue_cli.indexer", "sync", str(dam), "--model", tiny_clip, "--qdrant-path", store, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CATALOGUE_MAX_FILE_MB": "2"},
    )
    assert done.returncode == 7, done.stderr
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    failed = {f["path"]: f["error"] for f in report["failed"]}
    assert failed == {
        "pipe.jpg": "not a regular file; only image files are read",
        "huge.jpg": "larger than the 2 MB file limit; raise CATALOGUE_MAX_FILE_MB to accept it",
        "broken.jpg": "broken symbolic link",
        "loop-a.jpg": "broken symbolic link",
        "loop-b.jpg": "broken symbolic link",
    }
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"zero.jpg", "outside.jpg", "linked-folder/", "photo.heic"}
    assert "not followed" in skipped["zero.jpg"] and "heif-convert" in skipped["photo.heic"]
    assert len([line for line in done.stderr.splitlines() if line.startswith(("failed: ", "skipped: "))]) == 9
    assert report["added"] == ORIGINAL + 1  # the good ones and the link inside the DAM
    assert len(stored_paths(store)) == ORIGINAL + 1


def test_a_known_file_that_cannot_be_read_keeps_its_point(synced, cli, dam, store):
    import os

    target = dam / "generated" / "BLUE-BAG.png"
    target.unlink()
    os.mkfifo(target)  # the same path, now something that cannot be read
    result, report = sync_json(cli, dam, store)
    assert (result.exit_code, report["deleted"], [f["path"] for f in report["failed"]]) == (7, 0, ["generated/BLUE-BAG.png"])
    assert len(stored_paths(store)) == ORIGINAL


def test_a_dam_vanishing_mid_run_deletes_nothing(synced, cli, dam, store, monkeypatch):
    """Every file touched (so each must be read to be confirmed), then the folder disappears after its listing."""
    import os
    import shutil

    import indexer.sync

    for path in dam.rglob("*.*"):
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    real_plan = indexer.sync._plan

    def plan_then_unmount(*args):
        planned = real_plan(*args)
        shutil.rmtree(dam)
        return planned

    monkeypatch.setattr(indexer.sync, "_plan", plan_then_unmount)
    result, report = sync_json(cli, dam, store)
    assert result.exit_code == 7
    assert (report["deleted"], len(report["failed"]), report["unchanged"]) == (0, ORIGINAL, 0)
    assert len(stored_paths(store)) == ORIGINAL  # nothing lost


def test_another_folder_asks_for_reindex_and_a_moved_one_is_followed(synced, cli, dam, store, tmp_path):
    from conftest import studio_shot

    other = tmp_path / "other-dam"
    studio_shot(other / "X.png", (1, 200, 1))
    result = cli("indexer", "sync", other, "--qdrant-path", store)
    assert "--reindex" in one_line(result, 2) and len(stored_paths(store)) == ORIGINAL
    moved = tmp_path / "moved-dam"
    dam.rename(moved)  # the same files, mounted elsewhere
    result, report = sync_json(cli, moved, store)
    assert (result.exit_code, report["unchanged"], report["deleted"]) == (0, ORIGINAL, 0)
    result, report = sync_json(cli, other, store, "--reindex")
    assert (result.exit_code, report["added"]) == (0, 1) and stored_paths(store) == {"X.png"}


def test_sigterm_stops_a_sync_like_ctrl_c_and_it_resumes(tmp_path, store, tiny_clip, cli):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    from conftest import eventually, studio_shot

    dam = tmp_path / "many"
    rng = np.random.default_rng(3)
    for i in range(150):
        studio_shot(dam / f"T{i:03d}.png", tuple(int(v) for v in rng.integers(0, 255, 3)))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "catalogue_cli.indexer",
            "sync",
            str(dam),
            "--model",
            tiny_clip,
            "--qdrant-path",
            store,
            "--batch-size",
            "2",
            "--workers",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pending = Path(store, "collections", "catalogue", "index.pending")  # appears with the first write
    eventually(lambda: pending.exists() or process.poll() is not None, timeout=120, interval=0.01)
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 143
    assert err.strip().splitlines()[-1] == "Stopped (SIGTERM). Run the same command again to finish; nothing written is lost."
    result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", store)
    assert result.exit_code == 0
    assert len(stored_paths(store)) == 150


def test_fuzzed_image_files_never_escape_as_exceptions(cli, tmp_path, store, tiny_clip):
    """Three hundred mutated copies of real catalogue files (flipped bytes, cuts, splices), fixed seed."""
    import json

    import numpy as np
    from conftest import DATA

    from indexer.errors import BadInputError
    from indexer.images import load_rgb

    rng = np.random.default_rng(20261128)
    sources = [p.read_bytes() for p in sorted((DATA / "dam").glob("*.jpeg"))]
    dam = tmp_path / "fuzz"
    dam.mkdir()
    for i in range(300):
        data = bytearray(sources[i % len(sources)])
        kind = i % 4
        if kind == 0:  # flip bytes anywhere, headers included
            for _ in range(int(rng.integers(1, 20))):
                data[int(rng.integers(len(data)))] = int(rng.integers(256))
        elif kind == 1:  # cut
            data = data[: int(rng.integers(1, len(data)))]
        elif kind == 2:  # splice another file in
            other = sources[int(rng.integers(len(sources)))]
            at = int(rng.integers(len(data)))
            data = data[:at] + other[at : at + int(rng.integers(1, 2000))] + data[at:]
        else:  # random header bytes
            data[: int(rng.integers(2, 64))] = rng.integers(
                0, 256, size=len(data[: int(rng.integers(2, 64))]), dtype=np.uint8
            ).tobytes()
        (dam / f"F{i:03d}.jpg").write_bytes(bytes(data))
    for path in sorted(dam.iterdir()):
        try:
            load_rgb(path)
        except BadInputError:
            pass  # the only exception allowed out
    result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", store, "--json")
    assert result.exit_code in (0, 7) and "Traceback" not in result.output
    report = json.loads(result.stdout)
    assert report["added"] + len(report["failed"]) == 300
    assert len(all_points(store)) == report["added"]
