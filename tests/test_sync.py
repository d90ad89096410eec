"""`indexer sync`: a true sync of a DAM folder into an embedded Qdrant collection."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, all_points, open_store, studio_shot, unit_norms

from indexer.store import point_id, vector_name


def sync_json(cli, *args):
    result = cli("indexer", "sync", *args, "--json")
    return result, (json.loads(result.stdout) if result.stdout.strip().startswith("{") else None)


def test_first_sync_indexes_every_image_with_vector_colour_and_ids(synced, dam, store, tiny_clip):
    assert synced["added"] == 16 and synced["failed"] == [] and synced["encoded"] == 16
    points = all_points(store, with_vectors=True)
    assert len(points) == 16
    by_path = {p.payload["path"]: p for p in points}
    assert "generated/GREEN-SHOE.webp" in by_path and "generated/BLACK-BELT.JPG" in by_path  # recursive, any case
    shoe = by_path["generated/GREEN-SHOE.webp"]
    assert shoe.payload["product_id"] == "GREEN-SHOE"
    assert str(shoe.id) == point_id("generated/GREEN-SHOE.webp")
    assert shoe.payload["file"]["sha256"] and shoe.payload["file"]["size"] == (dam / "generated/GREEN-SHOE.webp").stat().st_size
    # The colour comes from the product, not the white backdrop: a green hue (negative a*).
    dominant = shoe.payload["colour"]["dominant"]
    assert dominant["a"] < -30 and dominant["L"] < 80
    assert len(shoe.payload["colour"]["palette"]) <= 3
    name = vector_name(tiny_clip)
    assert np.allclose(unit_norms(points, name), 1.0, atol=1e-4)
    assert len(shoe.vector[name]) == 16


def test_resync_with_nothing_changed_encodes_nothing(synced, cli, dam, store, tiny_clip, encode_calls):
    result, report = sync_json(cli, dam, "--qdrant-path", store)  # the collection remembers its model
    assert result.exit_code == 0
    assert report["unchanged"] == 16
    assert (report["added"], report["updated"], report["deleted"], report["encoded"]) == (0, 0, 0, 0)
    assert encode_calls == []


def test_point_deleted_behind_the_tools_back_is_restored(synced, cli, dam, store):
    with open_store(store) as handle:
        handle.collection("catalogue").delete([point_id("generated/RED-BAG.png")])
    result, report = sync_json(cli, dam, "--qdrant-path", store)
    assert (result.exit_code, report["added"], report["unchanged"]) == (0, 1, 15)


def test_changed_file_is_reencoded_in_place(synced, cli, dam, store, encode_calls):
    target = dam / "generated" / "RED-BAG.png"
    before = {p.payload["path"]: p for p in all_points(store, with_vectors=True)}["generated/RED-BAG.png"]
    studio_shot(target, (20, 200, 30), shape="rectangle")  # now a green rectangle
    result, report = sync_json(cli, dam, "--qdrant-path", store)
    assert result.exit_code == 0
    assert (report["updated"], report["added"], report["unchanged"]) == (1, 0, 15)
    assert encode_calls == [1]
    after = {p.payload["path"]: p for p in all_points(store, with_vectors=True)}
    assert len(after) == 16
    changed = after["generated/RED-BAG.png"]
    assert changed.id == before.id
    assert changed.payload["file"]["sha256"] != before.payload["file"]["sha256"]
    assert changed.payload["colour"]["dominant"]["a"] < 0 < before.payload["colour"]["dominant"]["a"]


def test_touched_but_identical_file_is_confirmed_by_hash_not_reencoded(synced, cli, dam, store, encode_calls):
    target = dam / "generated" / "BLUE-BAG.png"
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 5_000_000_000))
    _result, report = sync_json(cli, dam, "--qdrant-path", store)
    assert report["unchanged"] == 16 and report["updated"] == 0 and encode_calls == []
    stored = {p.payload["path"]: p for p in all_points(store)}["generated/BLUE-BAG.png"]
    assert stored.payload["file"]["mtime_ns"] == target.stat().st_mtime_ns  # next time the fast path holds


def test_deleted_file_leaves_the_collection(synced, cli, dam, store):
    (dam / "generated" / "BLUE-BAG.png").unlink()
    _result, report = sync_json(cli, dam, "--qdrant-path", store)
    assert report["deleted"] == 1 and report["unchanged"] == 15
    assert "generated/BLUE-BAG.png" not in {p.payload["path"] for p in all_points(store)}


def test_dry_run_reports_changes_without_making_them(synced, cli, dam, store, encode_calls):
    (dam / "generated" / "BLUE-BAG.png").unlink()
    studio_shot(dam / "generated" / "NEW.png", (90, 90, 0))
    _result, report = sync_json(cli, dam, "--qdrant-path", store, "--dry-run")
    assert (report["added"], report["deleted"], report["dry_run"]) == (1, 1, True)
    assert encode_calls == []
    paths = {p.payload["path"] for p in all_points(store)}
    assert "generated/BLUE-BAG.png" in paths and "generated/NEW.png" not in paths


def test_human_summary_lists_each_count(cli, dam, store, tiny_clip):
    result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", store)
    assert result.exit_code == 0
    for word in ("added", "updated", "deleted", "unchanged", "failed"):
        assert word in result.stdout
    assert "images/s" in result.stdout


def test_several_images_of_one_product_share_its_id(cli, tmp_path, store, tiny_clip):
    dam = tmp_path / "multi"
    studio_shot(dam / "BAG1.jpg", (200, 20, 30))
    studio_shot(dam / "BAG1_2.jpg", (190, 30, 40), shape="rectangle")
    studio_shot(dam / "BAG2.jpg", (20, 20, 200))
    result, report = sync_json(cli, dam, "--model", tiny_clip, "--qdrant-path", store, "--id-pattern", r"^(.+?)(_\d+)?$")
    assert report["added"] == 3
    ids = sorted(p.payload["product_id"] for p in all_points(store))
    assert ids == ["BAG1", "BAG1", "BAG2"]
    # Search returns each product once, with its best image.
    result = cli("search", "image", dam / "BAG1_2.jpg", "--qdrant-path", store, "--json", "--locate", "none")
    matches = json.loads(result.stdout)[0]["matches"]
    assert [m["product_id"] for m in matches].count("BAG1") == 1
    assert len(matches) == 2
    assert matches[0]["product_id"] == "BAG1" and matches[0]["path"] == "BAG1_2.jpg"


def test_manifest_metadata_becomes_payload_and_filters_search(cli, dam, store, tiny_clip):
    manifest = DATA / "products.csv"
    result, report = sync_json(
        cli,
        dam,
        "--model",
        tiny_clip,
        "--qdrant-path",
        store,
        "--manifest",
        manifest,
        "--manifest-column",
        "MMC=product_id",
        "--manifest-column",
        "Product_BusinessUnitDesc=category",
    )
    assert report["added"] == 16
    by_id = {p.payload["product_id"]: p.payload for p in all_points(store)}
    assert by_id["M3550HLEZJM900"]["category"] == "W Bags"
    assert by_id["RED-BAG"]["category"] is None  # not in the manifest: indexed anyway
    query = dam / "M9206UMOSM941.jpeg"
    result = cli("search", "image", query, "--qdrant-path", store, "--filter", "category=W Bags", "--json")
    matches = json.loads(result.stdout)[0]["matches"]
    assert {m["product_id"] for m in matches} == {"M3550HLEZJM900", "M9206UMOSM941"}
    assert all(m["category"] == "W Bags" for m in matches)


def test_manifest_change_rewrites_payload_without_encoding(cli, dam, store, tiny_clip, tmp_path, encode_calls):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,category,season\ngenerated/RED-BAG.png,Bags,SS24\n")
    sync_json(cli, dam, "--model", tiny_clip, "--qdrant-path", store, "--manifest", manifest)
    encode_calls.clear()
    manifest.write_text("file,category,season\ngenerated/RED-BAG.png,Leather goods,AW25\n")
    _result, report = sync_json(cli, dam, "--qdrant-path", store, "--manifest", manifest)
    assert (report["updated"], report["metadata_only"], report["unchanged"]) == (1, 1, 15)
    assert encode_calls == []
    payload = {p.payload["path"]: p.payload for p in all_points(store)}["generated/RED-BAG.png"]
    assert payload["category"] == "Leather goods" and payload["meta"] == {"season": "AW25"}
    assert payload["colour"]["dominant"]["a"] > 30  # colours untouched by a metadata change


def test_manifest_without_a_key_column_is_refused(cli, dam, store, tiny_clip):
    result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", store, "--manifest", DATA / "products.csv")
    assert result.exit_code == 3
    assert "--manifest-column" in result.stderr and "Traceback" not in result.output


def test_another_model_is_refused_then_reindex_rebuilds(synced, cli, dam, store, tiny_clip, other_clip):
    result = cli("indexer", "sync", dam, "--model", other_clip, "--qdrant-path", store)
    assert result.exit_code == 5
    assert "--reindex" in result.stderr and tiny_clip in result.stderr
    result = cli("search", "image", dam / "generated" / "RED-BAG.png", "--model", other_clip, "--qdrant-path", store)
    assert result.exit_code == 5
    result, report = sync_json(cli, dam, "--model", other_clip, "--qdrant-path", store, "--reindex")
    assert result.exit_code == 0 and report["added"] == 16
    points = all_points(store, with_vectors=True)
    assert len(points) == 16 and {len(p.vector[vector_name(other_clip)]) for p in points} == {24}


def test_info_describes_the_collection(synced, cli, store, tiny_clip):
    result = cli("indexer", "info", "--qdrant-path", store, "--json")
    info = json.loads(result.stdout)
    assert info["images"] == 16 and info["products"] == 16
    assert info["models"] == [{"model": tiny_clip, "vector": vector_name(tiny_clip), "dim": 16, "revision": 1}]


def test_moving_a_file_deletes_old_point_and_adds_new(synced, cli, dam, store):
    shutil.move(dam / "generated" / "RED-BAG.png", dam / "RED-BAG.png")
    _result, report = sync_json(cli, dam, "--qdrant-path", store)
    assert (report["added"], report["deleted"]) == (1, 1)
    paths = [p.payload["path"] for p in all_points(store)]
    assert "RED-BAG.png" in paths and "generated/RED-BAG.png" not in paths and len(paths) == 16


def test_hidden_and_non_image_files_are_skipped(cli, dam, store, tiny_clip):
    (dam / "._M3550HLEZJM900.jpeg").write_bytes(b"AppleDouble junk")
    (dam / ".thumbs").mkdir()
    studio_shot(dam / ".thumbs" / "x.png", (1, 2, 3))
    (dam / "notes.txt").write_text("not an image")
    _result, report = sync_json(cli, dam, "--model", tiny_clip, "--qdrant-path", store)
    assert report["added"] == 16 and report["failed"] == []


@pytest.mark.parametrize("bad", ["folder", "file"])
def test_missing_or_non_folder_dam_is_one_line_exit_3(cli, tmp_path, store, tiny_clip, bad):
    target = tmp_path / "nope"
    if bad == "file":
        target.write_text("x")
    result = cli("indexer", "sync", target, "--model", tiny_clip, "--qdrant-path", store)
    assert result.exit_code == 3
    assert result.stderr.count("\n") == 1 and str(target) in result.stderr


def test_empty_folder_changes_nothing(synced, cli, tmp_path, store):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("indexer", "sync", empty, "--qdrant-path", store)
    assert result.exit_code == 3 and "no images found" in result.stderr
    assert len(all_points(store)) == 16  # a wrongly mounted folder must not wipe the index


def test_bad_files_are_reported_and_the_rest_indexed(cli, dam, store, tiny_clip, monkeypatch):
    good = (dam / "M3550HLEZJM900.jpeg").read_bytes()
    (dam / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (dam / "empty.png").write_bytes(b"")
    (dam / "text.jpg").write_text("this is not a jpeg")
    monkeypatch.setenv("CATALOGUE_MAX_PIXELS", "1000000")
    from PIL import Image

    Image.new("RGB", (1500, 1000), "white").save(dam / "huge.png")
    result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", store, "--json")
    assert result.exit_code == 7
    report = json.loads(result.stdout)
    assert report["added"] == 16
    failed = {f["path"]: f["error"] for f in report["failed"]}
    assert set(failed) == {"truncated.jpg", "empty.png", "text.jpg", "huge.png"}
    assert "empty" in failed["empty.png"] and "pixel limit" in failed["huge.png"]
    assert "not an image" in failed["text.jpg"]
    for name in failed:
        assert f"failed: {name}:" in result.stderr
    assert "Traceback" not in result.output
    assert len(all_points(store)) == 16
    result, report = sync_json(cli, dam, "--qdrant-path", store)  # bad files are tried again, not taken as synced
    assert result.exit_code == 7 and len(report["failed"]) == 4 and report["unchanged"] == 16


def test_file_that_turns_unreadable_keeps_its_last_good_point_and_says_so(synced, cli, dam, store):
    (dam / "generated" / "RED-BAG.png").write_bytes(b"garbage")
    result = cli("indexer", "sync", dam, "--qdrant-path", store, "--json")
    assert result.exit_code == 7
    report = json.loads(result.stdout)
    assert (report["deleted"], [f["path"] for f in report["failed"]]) == (0, ["generated/RED-BAG.png"])
    assert "generated/RED-BAG.png" in {p.payload["path"] for p in all_points(store)}
    studio_shot(dam / "generated" / "RED-BAG.png", (20, 200, 30))  # fixed: re-encoded in place
    report = json.loads(cli("indexer", "sync", dam, "--qdrant-path", store, "--json").stdout)
    assert (report["updated"], report["failed"]) == (1, [])


def test_unreachable_server_is_exit_4(cli, dam, tiny_clip):
    result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-url", "http://127.0.0.1:9")
    assert result.exit_code == 4
    assert "cannot reach Qdrant at http://127.0.0.1:9" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("command", [("indexer", "sync"), ("search", "image"), ("indexer", "info")])
def test_store_held_by_another_process_names_it_and_exits_4(synced, cli, dam, store, command):
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from indexer.store import open_store; import sys; "
            f"s = open_store(path={store!r}, command='search serve'); s.collection('catalogue'); "
            "print('ready', flush=True); sys.stdin.readline()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        # A stale announcement of a server that is not the holder is not followed.
        Path(store, "serve.json").write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": 1, "cert": None}))
        args = {"sync": (dam,), "image": (dam / "generated" / "RED-BAG.png",), "info": ()}[command[1]]
        result = cli(*command, *args, "--qdrant-path", store)
        assert result.exit_code == 4
        assert f"in use by process {holder.pid} (search serve)" in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    finally:
        holder.communicate("\n", timeout=30)
    assert cli("indexer", "info", "--qdrant-path", store).exit_code == 0  # released when the holder ends


def test_server_url_without_scheme_is_exit_4(cli, dam, tiny_clip):
    result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-url", "qdrant:6333")
    assert result.exit_code == 4 and result.stderr.startswith("Error: cannot reach Qdrant at qdrant:6333")
    assert result.stderr.count("\n") == 1


def test_store_path_that_cannot_be_created_is_exit_4(cli, dam, tmp_path, tiny_clip):
    (tmp_path / "a-file").write_text("")
    result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", tmp_path / "a-file" / "store")
    assert result.exit_code == 4 and "writable --qdrant-path" in result.stderr and result.stderr.count("\n") == 1


def test_unreadable_subfolder_stops_the_sync_instead_of_deleting_its_images(synced, cli, dam, store, monkeypatch):
    import os

    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("generated"):  # tests run as root here: chmod cannot deny a read
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = cli("indexer", "sync", dam, "--qdrant-path", store)
    assert result.exit_code == 3 and "cannot read folder" in result.stderr and "nothing was changed" in result.stderr
    monkeypatch.undo()
    assert len(all_points(store)) == 16


def test_reindex_alone_keeps_the_collection_model(synced, cli, dam, store, tiny_clip):
    result, report = sync_json(cli, dam, "--qdrant-path", store, "--reindex")
    assert result.exit_code == 0 and report["models"] == [tiny_clip] and report["added"] == 16


def test_unloadable_model_is_exit_6(cli, dam, store, tmp_path):
    result = cli("indexer", "sync", dam, "--model", str(tmp_path / "no-such-model"), "--qdrant-path", store)
    assert result.exit_code == 6
    assert "efficientnet-lite0" in result.stderr and result.stderr.count("\n") == 1


def test_shards_synced_one_after_another_equal_one_full_sync(cli, dam, tmp_path, tiny_clip):
    """N workers' shards (--shard I/N) make exactly the collection one sync makes, point for point."""
    full, sharded = str(tmp_path / "full"), str(tmp_path / "sharded")
    assert cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", full).exit_code == 0
    added = []
    for index in range(3):
        result, report = sync_json(cli, dam, "--model", tiny_clip, "--qdrant-path", sharded, "--shard", f"{index}/3")
        assert result.exit_code == 0 and report["shard"] == f"{index}/3"
        added.append(report["added"])
    assert sum(added) == 16 and all(0 < n < 16 for n in added)  # each worker did a part
    one = {p.id: p for p in all_points(full, with_vectors=True)}
    many = {p.id: p for p in all_points(sharded, with_vectors=True)}
    assert one.keys() == many.keys()
    for pid, point in one.items():
        assert many[pid].payload["path"] == point.payload["path"]
        assert many[pid].payload["colour"] == point.payload["colour"]
        for name, vector in point.vector.items():
            assert np.allclose(many[pid].vector[name], vector, atol=1e-6)


def test_a_shard_deletes_only_its_own_vanished_points(cli, dam, store, tiny_clip):
    from indexer.store.schema import shard_of

    assert cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", store).exit_code == 0
    owner = {p.payload["path"]: shard_of(p.id, 2) for p in all_points(store)}
    gone = [path for path, shard in owner.items() if shard == 1][:2]
    for path in gone:
        (dam / path).unlink()
    result, report = sync_json(cli, dam, "--qdrant-path", store, "--shard", "0/2")
    assert (result.exit_code, report["deleted"]) == (0, 0)  # not shard 0's points to delete
    assert set(gone) <= {p.payload["path"] for p in all_points(store)}
    result, report = sync_json(cli, dam, "--qdrant-path", store, "--shard", "1/2")
    assert (result.exit_code, report["deleted"]) == (0, 2)
    assert not set(gone) & {p.payload["path"] for p in all_points(store)}


@pytest.mark.parametrize("bad", ["2/2", "1", "a/b", "-1/3", "0/0"])
def test_bad_shard_values_and_reindex_with_a_shard_are_usage_errors(cli, dam, store, tiny_clip, bad):
    result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", store, "--shard", bad)
    assert result.exit_code == 2 and "I/N" in result.stderr
    result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", store, "--shard", "0/2", "--reindex")
    assert result.exit_code == 2 and "without --shard" in result.stderr


def test_images_prepared_in_processes_make_the_points_threads_make(dam, tmp_path, tiny_clip):
    """Big jobs are prepared in worker processes, small ones in threads: same vectors, same colours,
    and a bad file is reported alike."""
    from indexer.scan import scan
    from indexer.store import open_store as open_embedded
    from indexer.sync import sync

    (dam / "text.jpg").write_text("this is not a jpeg")
    points, reports = {}, {}
    for processes in (True, False):
        path = tmp_path / f"store-{processes}"
        with open_embedded(path=path, create=True) as handle:
            reports[processes] = sync(
                dam, scan(dam), handle.collection("catalogue"), model=tiny_clip, workers=2, processes=processes
            )
        points[processes] = {p.id: p for p in all_points(str(path), with_vectors=True)}
    assert (reports[True].prepared_by, reports[False].prepared_by) == ("2 processes", "2 threads")
    assert reports[True].failed == reports[False].failed and [p for p, _ in reports[True].failed] == ["text.jpg"]
    assert reports[True].added == reports[False].added == 16
    assert points[True].keys() == points[False].keys()
    for pid, point in points[False].items():
        assert points[True][pid].payload == point.payload
        for name, vector in point.vector.items():
            assert np.array_equal(points[True][pid].vector[name], vector)


def test_a_preparing_process_that_dies_stops_the_job_with_one_line(tmp_path, monkeypatch):
    """A worker killed (out of memory, a crashing decoder) is an error that says to run again, not a hang."""
    from indexer.errors import CatalogueError
    from indexer.prepare import Job, Preparer

    (tmp_path / "dying_step.py").write_text("import os\n\ndef die(image):\n    os._exit(9)\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers start with the parent's sys.path
    import dying_step

    jobs = [Job(path, path.name) for path in sorted((DATA / "dam").glob("*.jpeg"))]
    with pytest.raises(CatalogueError, match=r"worker process preparing images died.*run the same command again"):
        with Preparer([dying_step.die], 3, workers=1, processes=True) as preparer:
            list(preparer.map(jobs, window=8))
