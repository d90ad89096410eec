"""A store written by the previous embedded backend (qdrant-client local mode) converts without re-encoding."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from conftest import all_points

from indexer.store.schema import METADATA_KEY

RED = Path("generated") / "RED-BAG.png"


def write_local_mode_store(folder: Path, points, record: dict) -> None:
    """What the previous version wrote: qdrant-client local mode, one named vector per model,
    the record in collection metadata, keyword payload indexes."""
    from qdrant_client import QdrantClient
    from qdrant_client import models as qm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # local mode says payload indexes do nothing there
        client = QdrantClient(path=str(folder))
        client.create_collection(
            "catalogue",
            vectors_config={m["vector"]: qm.VectorParams(size=m["dim"], distance=qm.Distance.COSINE) for m in record["models"]},
            metadata={METADATA_KEY: {k: record[k] for k in ("schema", "models", "root")}},
        )
        for field in ("product_id", "path", "category"):
            client.create_payload_index("catalogue", field, qm.PayloadSchemaType.KEYWORD)
        client.upsert(
            "catalogue",
            points=[qm.PointStruct(id=p.id, vector={k: list(v) for k, v in p.vector.items()}, payload=p.payload) for p in points],
        )
        client.close()


def test_local_mode_store_is_refused_with_the_command_then_converted(synced, cli, dam, store, tmp_path, encode_calls):
    original = {p.id: p for p in all_points(store, with_vectors=True)}
    record = json.loads(Path(store, "collections", "catalogue", "collection.json").read_text())
    legacy = tmp_path / "old-store"
    write_local_mode_store(legacy, original.values(), record)

    for command in (("search", "image", dam / RED), ("indexer", "sync", dam), ("indexer", "info")):
        result = cli(*command, "--qdrant-path", legacy)
        assert result.exit_code == 4, result.output
        assert f"indexer migrate --qdrant-path {legacy}" in result.stderr and result.stderr.count("\n") == 1

    (legacy / "collections" / ".catalogue.migrating").mkdir(parents=True)  # what a killed conversion leaves
    result = cli("indexer", "migrate", "--qdrant-path", legacy, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["converted"] == [
        {"collection": "catalogue", "points": 16, "models": [record["models"][0]["model"]]}
    ]
    assert (legacy / "legacy-local-mode" / "meta.json").is_file()  # the old files are kept aside

    converted = {p.id: p for p in all_points(str(legacy), with_vectors=True)}
    assert converted.keys() == original.keys()
    for pid, point in original.items():
        assert converted[pid].payload == point.payload
        for name, vector in point.vector.items():
            assert np.allclose(converted[pid].vector[name], vector, atol=1e-6)
    info = json.loads(cli("indexer", "info", "--qdrant-path", legacy, "--json").stdout)
    assert info["models"] == record["models"] and info["images"] == 16

    # Nothing re-encoded, then or now: the converted collection is in sync with the folder.
    result = cli("indexer", "sync", dam, "--qdrant-path", legacy, "--json")
    assert json.loads(result.stdout)["unchanged"] == 16 and encode_calls == []
    before = json.loads(cli("search", "image", dam / RED, "--qdrant-path", store, "--json").stdout)[0]["matches"]
    after = json.loads(cli("search", "image", dam / RED, "--qdrant-path", legacy, "--json").stdout)[0]["matches"]
    assert [(m["product_id"], round(m["score"], 5)) for m in after] == [(m["product_id"], round(m["score"], 5)) for m in before]
    assert "Nothing to convert" in cli("indexer", "migrate", "--qdrant-path", legacy).stdout
