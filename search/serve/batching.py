"""Micro-batching: concurrent searches share one model forward.

Each request thread preprocesses its own views (PIL work, in parallel), then
hands the model inputs to one batching thread per encoder. That thread takes
whatever is waiting (up to `max_batch` inputs, waiting at most `max_wait`
seconds for more once something arrived) and runs one forward for all of it:
on a GPU, and for ViT on a CPU, one batch of 16 costs far less than 16
batches of 1. A single request still runs alone, after at most `max_wait`.

`close()` fails the inputs still waiting (and any submitted later) with
`ShuttingDown` at once, so no search waits for a forward that will never run.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future

import numpy as np

from indexer.encoders import Encoder
from search.serve.service import ShuttingDown


class BatchingEncoder:
    """An encoder whose forwards are shared between threads; `embed` and `embed_batch` block the caller only."""

    def __init__(self, encoder: Encoder, *, max_batch: int = 32, max_wait: float = 0.002, observe=None):
        self.encoder = encoder
        self.observe = observe  # called with each forward's size (the metrics' histogram)
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait)
        self._inbox: queue.Queue = queue.Queue()
        self._closed = False
        self._closing = threading.Lock()  # a submit either lands before the close or is refused
        self.forwards = 0  # batches run, for tests and /v1/info
        self.inputs = 0
        self._thread = threading.Thread(target=self._run, name=f"batch-{encoder.spec.vector}", daemon=True)
        self._thread.start()

    # What Searcher and sync use of an encoder.
    @property
    def spec(self):
        return self.encoder.spec

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    @property
    def batch_size(self) -> int:
        return self.encoder.batch_size

    def preprocess(self, image) -> np.ndarray:
        return self.encoder.preprocess(image)

    def embed(self, images: Iterable) -> np.ndarray:
        return self.submit(images).result()

    def submit(self, images: Iterable) -> Future:
        """Preprocess here (in the caller's thread), forward in the batching thread; the vectors come in the future."""
        return self._submit([self.encoder.preprocess(image) for image in images])

    def embed_batch(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return self._submit(list(inputs)).result()

    def _submit(self, inputs: list[np.ndarray]) -> Future:
        done: Future = Future()
        if not inputs:
            done.set_result(np.zeros((0, self.encoder.dim), dtype=np.float32))
        else:
            with self._closing:
                if self._closed:
                    raise ShuttingDown()
                self._inbox.put((inputs, done))
        return done

    def close(self) -> None:
        """Stop after the forward running now (if any); everything still waiting fails with ShuttingDown."""
        with self._closing:
            self._closed = True
            while True:
                try:
                    waiting = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if waiting is not None:
                    waiting[1].set_exception(ShuttingDown())
            self._inbox.put(None)

    def _run(self) -> None:
        while True:
            first = self._inbox.get()
            if first is None:
                return
            waiting, size = [first], len(first[0])
            while size < self.max_batch:
                try:
                    item = self._inbox.get(timeout=self.max_wait)
                except queue.Empty:
                    break
                if item is None:
                    self._inbox.put(None)  # stop after this batch
                    break
                waiting.append(item)
                size += len(item[0])
            self._forward(waiting)

    def _forward(self, waiting: list) -> None:
        inputs = [x for items, _ in waiting for x in items]
        try:
            vectors = np.concatenate(
                [
                    self.encoder.embed_batch(inputs[i : i + self.encoder.batch_size])
                    for i in range(0, len(inputs), self.encoder.batch_size)
                ]
            )
        except BaseException as exc:  # noqa: BLE001 - hand the failure to every waiting request
            for _, done in waiting:
                done.set_exception(exc)
            return
        self.forwards += 1
        self.inputs += len(inputs)
        if self.observe is not None:
            self.observe(len(inputs))
        start = 0
        for items, done in waiting:
            done.set_result(vectors[start : start + len(items)])
            start += len(items)
