"""Catalogue images made ready for the encoders: read, hash, decode, palette, model inputs.

This is a sync's CPU work outside the model, and it runs in worker processes.
The palette and Pillow's steps are many short C and numpy calls with the GIL
taken between them: threads preparing at once each take more CPU per image
than one alone, and a many-core GPU machine could not feed its GPU from one
interpreter. Processes share nothing, so every core prepares at full speed.
A job too small to repay starting them is prepared in threads, with the same
function and the same results.

Workers get each encoder's `input_step` (a small picklable recipe), never
the encoder: a worker imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.decode_budget import DecodeBudget, install
from indexer.errors import BadInputError, CatalogueError
from indexer.images import load_rgb, read_file

#: Images decode reduced down to this short side: models need 224-260 px, colours 96.
DECODE_SHORT_SIDE = 512
#: Jobs of at least this many images are prepared in processes; smaller ones in threads.
PROCESSES_FROM = 256
#: Images a process prepares per task: one image per task would spend more on messages than on images.
_CHUNK = 8
_PARENT_POLL_SECONDS = 0.5


@dataclass
class Prepared:
    """One image made ready, or why not. `inputs` is None when the hash proved the file unchanged."""

    sha256: str
    inputs: list[np.ndarray] | None = None  # one per encoder
    colour: dict | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # CPU seconds per stage


@dataclass(frozen=True)
class Job:
    path: Path
    label: str  # the path as messages name it
    known_sha256: str | None = None  # the file's recorded hash: skip the decoding if it still matches


def input_steps(encoders: Sequence) -> tuple[list[Callable], bool]:
    """Each encoder's preprocessing as the workers run it, and whether worker processes can run
    them all (each encoder's picklable `input_step`; threads fall back on `preprocess`)."""
    steps = [encoder.input_step() for encoder in encoders]
    portable = all(step is not None for step in steps)
    return [step or encoder.preprocess for step, encoder in zip(steps, encoders)], portable


def prepare(job: Job, steps: Sequence[Callable], colours: int) -> Prepared:
    """Read, hash, decode, palette and one input per step. Never raises for bad files.

    Stage times are the calling thread's CPU time: what each stage costs, whatever else runs.
    """
    from indexer.colour import extract_palette

    clock = time.thread_time
    t0 = clock()
    try:
        data = read_file(job.path, label=job.label)
    except BadInputError as exc:
        return Prepared("", error=exc.without(job.label))
    sha = hashlib.sha256(data).hexdigest()
    t1 = clock()
    if sha == job.known_sha256:
        return Prepared(sha, timings={"read": t1 - t0})  # touched, not changed
    try:
        image = load_rgb(data, name=job.label, draft=DECODE_SHORT_SIDE)
    except BadInputError as exc:
        return Prepared(sha, error=exc.without(job.label))
    t2 = clock()
    colour = extract_palette(image, k=colours).to_payload()
    t3 = clock()
    inputs = [step(image) for step in steps]
    t4 = clock()
    return Prepared(sha, inputs, colour, timings={"read": t1 - t0, "decode": t2 - t1, "colour": t3 - t2, "preprocess": t4 - t3})


class Preparer:
    """`prepare` over many jobs, in order, in `workers` processes (or threads for small jobs).

    Use as a context manager: leaving it stops the workers and drops the jobs not started.
    """

    def __init__(self, steps: Sequence[Callable], colours: int, *, workers: int, processes: bool):
        self.steps = list(steps)
        self.colours = colours
        self.workers = max(1, workers)
        self.processes = processes
        self._pool: Executor | None = None

    def __enter__(self) -> Preparer:
        if self.processes:
            # spawn, not fork: the parent already runs model and store threads, which fork would copy mid-flight.
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=context,
                initializer=_start_worker,
                # One decode budget for all the workers: more of them must not mean more memory for decodes.
                initargs=(os.getpid(), DecodeBudget.shared(context)),
            )
        else:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="prepare")
        return self

    def __exit__(self, *exc_info) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def map(self, jobs: Iterable[Job], window: int) -> Iterator[Prepared]:
        """Prepared images in the order of `jobs`, with about `window` images in flight at most
        (never so few that a worker waits)."""
        chunk = _CHUNK if self.processes else 1
        window = max(window, 2 * chunk * self.workers)  # every worker busy, and its next task waiting
        pending: deque = deque()
        group: list[Job] = []

        def submit() -> None:
            pending.append(self._pool.submit(_prepare_all, list(group), self.steps, self.colours))
            group.clear()

        for job in jobs:
            group.append(job)
            if len(group) == chunk:
                submit()
            while len(pending) * chunk >= window:
                yield from self._result(pending.popleft())
        if group:
            submit()
        while pending:
            yield from self._result(pending.popleft())

    @staticmethod
    def _result(future) -> list[Prepared]:
        try:
            return future.result()
        except BrokenProcessPool:
            raise CatalogueError(
                "a worker process preparing images died (out of memory, or killed); the images written so far "
                "are kept: run the same command again, with fewer --workers if memory is short"
            ) from None


def _prepare_all(jobs: list[Job], steps: Sequence[Callable], colours: int) -> list[Prepared]:
    return [prepare(job, steps, colours) for job in jobs]


def _start_worker(parent: int, budget: DecodeBudget) -> None:
    install(budget)
    # Ctrl-C reaches the whole process group: the parent stops the sync, workers must not print tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), name="watch-parent", daemon=True).start()


def _exit_with(parent: int) -> None:
    """A parent killed with -9 never tells its workers, and each holds its task queue's write end, so
    no end-of-file comes either: they would wait forever. They leave within a second of it instead."""
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_SECONDS)
    os._exit(0)
