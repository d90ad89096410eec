"""The GPU path: vectors computed on CUDA (fp16, bf16) agree with the CPU's. Skipped where there is no GPU.

CI has none; `benchmarks/gpu_check.sh` runs these on a lent GPU machine.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA

from indexer.images import load_rgb

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")

IMAGES = sorted((DATA / "dam").glob("*.jpeg"))


@pytest.mark.parametrize("model", [pytest.param("efficientnet-lite0", marks=pytest.mark.slow), "tiny-clip"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_gpu_vectors_match_cpu_vectors(model, dtype, tiny_clip):
    from indexer.encoders import load_encoder

    name = tiny_clip if model == "tiny-clip" else model
    cpu = load_encoder(name, device="cpu", runtime="torch")
    gpu = load_encoder(name, device="cuda", runtime="torch", dtype=dtype)
    assert gpu.batch_size == 256  # picked for the device
    images = [load_rgb(path) for path in IMAGES]
    expected, got = cpu.embed(images), gpu.embed(images)
    cosines = np.sum(expected * got, axis=1)
    tolerance = {"fp32": 1e-4, "fp16": 2e-3, "bf16": 2e-2}[dtype]
    assert np.all(cosines > 1 - tolerance), cosines.min()
    # The ranking a search sees is the same: each image's nearest other image.
    assert np.array_equal(np.argsort(-(expected @ expected.T), axis=1)[:, 1], np.argsort(-(got @ expected.T), axis=1)[:, 1])


def test_sync_on_the_gpu_gives_the_cpu_sync_points(cli, dam, tmp_path, tiny_clip):
    from conftest import all_points

    from indexer.store import vector_name

    stores = {}
    for device in ("cpu", "cuda"):
        stores[device] = str(tmp_path / device)
        result = cli(
            "indexer",
            "sync",
            dam,
            "--model",
            tiny_clip,
            "--qdrant-path",
            stores[device],
            "--device",
            device,
            "--runtime",
            "torch",
        )
        assert result.exit_code == 0, result.output
    cpu = {p.id: p for p in all_points(stores["cpu"], with_vectors=True)}
    gpu = {p.id: p for p in all_points(stores["cuda"], with_vectors=True)}
    assert cpu.keys() == gpu.keys()
    name = vector_name(tiny_clip)
    for pid in cpu:
        assert float(np.dot(cpu[pid].vector[name], gpu[pid].vector[name])) > 0.998
        assert cpu[pid].payload["colour"] == gpu[pid].payload["colour"]
