"""Fixtures: real components, small.

- CLIP checkpoints are real transformers classes with tiny random configs,
  saved with `save_pretrained` and loaded by the production code path.
- Stores are real embedded Qdrant folders under tmp_path.
- Catalogue images are real files: a few copies of the sample DAM plus
  generated studio-style shots.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import socket
import string
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

DATA = Path(__file__).parent / "data"

# Nothing in the tests may reach a model hub: checkpoints are built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

T = TypeVar("T")


def eventually(
    condition: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.05,
    *,
    awaited: str | None = None,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `condition` every `interval` seconds until it returns something truthy, and return that.

    Servers, watchers and processes change state on their own clock: a test waits for the state
    it needs instead of sleeping a guessed time. Past `timeout` the test fails saying what it
    awaited (`awaited`, or the condition's source line). Exceptions of the `ignoring` types count
    as "not yet" (a server not listening yet); any other exception, an assertion included, fails
    the test at once.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
        except ignoring as exc:
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    what = awaited or _source_of(condition)
    detail = f" (last error: {last_error!r})" if last_error is not None else ""
    pytest.fail(f"still waiting after {timeout:g} s for {what}{detail}", pytrace=False)


def _source_of(condition: Callable) -> str:
    try:
        return inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return repr(condition)


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """One ONNX export cache for the session (not the user's): each test model is exported once."""
    folder = tmp_path_factory.mktemp("onnx-cache")
    previous = os.environ.get("CATALOGUE_CACHE")
    os.environ["CATALOGUE_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("CATALOGUE_CACHE", None)
    else:
        os.environ["CATALOGUE_CACHE"] = previous


def _save_tiny_clip(folder: Path, projection_dim: int, seed: int) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": 99,
            "max_position_embeddings": 32,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=projection_dim,
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """A random CLIP checkpoint folder (16-d image embeddings)."""
    return str(_save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), projection_dim=16, seed=0))


@pytest.fixture(scope="session")
def other_clip(tmp_path_factory) -> str:
    """A second, different checkpoint (24-d): for model-mismatch tests."""
    return str(_save_tiny_clip(tmp_path_factory.mktemp("other-clip"), projection_dim=24, seed=1))


def write_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer: letters, end-of-word letters, four merges (red, bag) and the two special tokens."""
    vocab = {c: i for i, c in enumerate(string.ascii_lowercase)}
    vocab |= {f"{c}</w>": 26 + i for i, c in enumerate(string.ascii_lowercase)}
    merges = ["r e", "re d</w>", "b a", "ba g</w>"]
    for merge in merges:
        vocab["".join(merge.split())] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    # The text tower pools at the end-of-text token: the config must name this vocabulary's.
    config = json.loads((folder / "config.json").read_text())
    config["text_config"] |= {
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        "pad_token_id": vocab["<|endoftext|>"],
    }
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="session")
def clip_with_tokenizer(tiny_clip, tmp_path_factory) -> str:
    """The tiny CLIP with a real (tiny) CLIP tokenizer: a model with a text tower."""
    folder = Path(shutil.copytree(tiny_clip, tmp_path_factory.mktemp("clip") / "checkpoint"))
    write_tokenizer(folder)
    return str(folder)


def studio_shot(path: Path, colour: tuple[int, int, int], shape: str = "ellipse", size: int = 128) -> Path:
    """A product-like picture: one coloured shape on a white backdrop."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (size // 5, size // 4, size - size // 5, size - size // 6)
    getattr(draw, shape)(box, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture
def dam(tmp_path) -> Path:
    """A small DAM folder: 12 real catalogue images plus 4 generated ones in a subfolder."""
    root = tmp_path / "dam"
    shutil.copytree(DATA / "dam", root)
    studio_shot(root / "generated" / "RED-BAG.png", (200, 20, 30))
    studio_shot(root / "generated" / "BLUE-BAG.png", (20, 40, 200))
    studio_shot(root / "generated" / "GREEN-SHOE.webp", (30, 160, 60), shape="rectangle")
    studio_shot(root / "generated" / "BLACK-BELT.JPG", (15, 15, 15), shape="rectangle")
    return root


@pytest.fixture
def store(tmp_path) -> str:
    return str(tmp_path / "qdrant")


@pytest.fixture
def cli():
    """Run a CLI command in-process; returns click's Result (stdout, stderr, exit_code)."""
    from catalogue_cli.indexer import main as indexer_main
    from catalogue_cli.search import main as search_main

    runner = CliRunner()
    commands = {"indexer": indexer_main, "search": search_main}

    def invoke(program: str, *args: str, env: dict | None = None):
        return runner.invoke(commands[program], [str(a) for a in args], catch_exceptions=False, env=env)

    return invoke


@pytest.fixture
def synced(cli, dam, store, tiny_clip):
    """A DAM folder already synced into an embedded store with the tiny CLIP."""
    result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", store, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def encode_calls(monkeypatch) -> list[int]:
    """Records the batch size of every real model call made through the Encoder interface."""
    from indexer.encoders import Encoder

    calls: list[int] = []
    original = Encoder.embed_batch

    def spy(self, inputs):
        calls.append(len(inputs))
        return original(self, inputs)

    monkeypatch.setattr(Encoder, "embed_batch", spy)
    return calls


def open_store(path: str):
    """The embedded store through the gateway, for assertions; close it before the next CLI call."""
    from indexer.store import open_store as open_through_gateway

    return open_through_gateway(path=path)


@dataclass
class StoredPoint:
    id: str
    payload: dict
    vector: dict = field(default_factory=dict)


def all_points(path: str, collection: str = "catalogue", with_vectors: bool = False) -> list[StoredPoint]:
    """Every point of a collection, read through the gateway (whole payloads)."""
    with open_store(path) as store:
        catalogue = store.collection(collection)
        points = [StoredPoint(pid, payload) for pid, payload in catalogue.scroll(_ALL_FIELDS)]
        if with_vectors and points:
            names = [m.vector for m in catalogue.models()]
            stored = catalogue.vectors([p.id for p in points], names)
            for p in points:
                p.vector = stored[p.id]
        return points


_ALL_FIELDS = ("product_id", "path", "category", "meta", "file", "colour", "source", "feedback")


def unit_norms(points, vector: str) -> np.ndarray:
    return np.array([np.linalg.norm(p.vector[vector]) for p in points])


# -- search serve in-process ---------------------------------------------------------------------


def wait_ready(client, timeout: float = 120) -> None:
    def ready() -> bool:
        response = client.get("/readyz")
        if response.status_code == 200:
            return True
        assert response.status_code == 503 and response.headers["Retry-After"]
        if "failed" in response.json()["reason"]:
            raise AssertionError(response.json()["reason"])
        return False

    eventually(ready, timeout=timeout, awaited="the service to become ready")


@pytest.fixture
def serve(store):
    """serve(**config) -> a TestClient on a fresh app over `store` (the tests' synced collection), ready."""
    from fastapi.testclient import TestClient

    clients = []

    def start(*, api_key=None, feedback_key=None, open_feedback=True, max_upload_mb=25, cors=(), ready=True, **config):
        from search.serve.app import create_app
        from search.serve.service import ServeConfig, Service

        options = {"qdrant_path": store, "model_loading": {"device": "cpu"}, "locate": "none"} | config
        http = {"api_key": api_key, "feedback_key": feedback_key, "open_feedback": open_feedback, "cors_origins": cors}
        service = Service(ServeConfig(**options, **http, max_upload_mb=max_upload_mb))
        app = create_app(service)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        if ready:
            wait_ready(client)
        client.service = service
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "status", "request_id"} and body["status"] == status
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert "Traceback" not in body["error"] and "\n" not in body["error"]
    return body["error"]


# -- search serve as a process ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(port: int, timeout: float = 120) -> None:
    """Until `search serve` on `port` answers /readyz with 200."""
    import httpx

    eventually(
        lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200,
        timeout=timeout,
        interval=0.2,
        ignoring=(httpx.TransportError,),
        awaited=f"search serve on port {port} to become ready",
    )


def serve_argv(store, port: int, *options: str) -> list[str]:
    """The command line of `search serve` on the embedded `store` at `port` (as tests start it in a process)."""
    return [sys.executable, "-m", "catalogue_cli.search", "serve", "--qdrant-path", str(store), "--port", str(port), *options]


@contextlib.contextmanager
def serve_holding(store: str, **env: str):
    """`search serve` as a process on the embedded `store` (so it holds it), with extra environment;
    yields its port once ready, stops it afterwards."""
    port = free_port()
    process = subprocess.Popen(
        serve_argv(store, port, "--locate", "none"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    try:
        wait_for_http(port)
        yield port
    finally:
        process.terminate()
        process.communicate(timeout=60)
