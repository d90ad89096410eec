"""The confidence refitted on the store's own answers, in the background of `search serve`.

The built-in calibration was fitted on synthetic photos, which do not look
like a store's: only the photos staff confirmed say what a right answer
looks like there. So the server does by itself what `search eval --feedback
--calibrate` does by hand, and keeps the fit only when it is better.

- When: once the feedback log holds `min_answers` answers that name a
  product (confirmed or corrected: each is a right or wrong top-1, and with
  its product hidden a not-in-catalogue case), then after `every` new ones,
  or a quarter more than at the last fit where that is more (a fit searches
  every answer again: so refits cost in all a few times what the answers
  cost once). "Not in the catalogue" answers join each fit as negatives but do not
  count toward it: alone they say nothing of right answers. A burst of
  answers is one fit (it waits until answers pause for `quiet` seconds), and
  one fit runs at a time, on its own thread, never a request's.
- On what: every answer in the log, each photo searched as `search eval
  --feedback` searches it (without its own store view), default options.
- Adopted or not: the new fit's leave-one-photo-out AUC (`confidence.held_out`) against the AUC of
  the calibration in force on the same answers; adopted only when strictly
  higher. The one in force may have been fitted on some of these photos,
  so its AUC here is partly in-sample: the comparison leans toward keeping it.
- Kept: every fit, adopted or not, with its figures, in the collection's
  record (`calibration_fits`, the newest HISTORY).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace

from indexer.errors import CatalogueError
from search.confidence import DEFAULT_MIN_CONFIDENCE, STORE_ANSWERS, Calibration, fit, held_out

log = logging.getLogger("catalogue.refit")
#: Fits kept in the collection's record, newest last.
HISTORY = 20
#: The record's key for them.
FITS = "calibration_fits"


@dataclass(frozen=True)
class Trial:
    """A calibration fitted on the store's answers, with its figures beside those of the one in force."""

    calibration: Calibration | None  # None: it could not be fitted (`figures` says why)
    figures: dict
    samples: list = field(default_factory=list)  # (signals, right) of every answer it was judged on
    groups: list = field(default_factory=list)  # the photo of each

    @property
    def better(self) -> bool:
        auc, current = self.figures.get("auc"), self.figures.get("auc_in_force")
        return self.calibration is not None and auc is not None and (current is None or auc > current)


def labelled(entries) -> int:
    """The answers that count toward a refit: those naming a product (confirmed or corrected)."""
    return sum(1 for entry in entries if entry.product_id)


def try_fit(searcher, entries, *, progress=None, min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> Trial:
    """Search every answer's photo again, fit a calibration on them and judge it leave-one-photo-out,
    beside the calibration in force judged on the same answers. Writes nothing."""
    from sklearn.metrics import roc_auc_score

    from search.evaluate import Setting, evaluate, feedback_queries
    from search.options import SearchOptions

    started = time.perf_counter()
    options = SearchOptions()
    setting = Setting("default", options.colour, options.alpha, options.threshold)
    evaluation = evaluate(searcher, feedback_queries(entries), [setting], progress=progress, every_point=False)
    searched = time.perf_counter() - started
    samples, groups = evaluation.calibration_samples(setting.name), evaluation.calibration_photos(setting.name)
    right = [found_right for _, found_right in samples]
    in_force = evaluation.confidence_quality(setting.name, searcher.calibration, min_confidence) or {}
    figures = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "answers": len(entries),
        "labelled": labelled(entries),
        "samples": len(samples),
        "right": sum(right),
        "in_force": searcher.calibration.kind,
        "auc_in_force": in_force.get("auc"),
        "flagged_right_in_force": in_force.get("flagged_right"),
        "search_s": round(searched, 2),
    }
    try:
        predicted = held_out(samples, groups)
        calibration, quality = fit(samples, source=f"{len(entries)} answers of the store", groups=groups)
    except ValueError as exc:
        return Trial(None, {**figures, "error": str(exc), "seconds": round(time.perf_counter() - started, 2)}, samples, groups)
    flagged = [p < min_confidence for p, found_right in zip(predicted, right) if found_right]
    figures |= {
        "auc": round(float(roc_auc_score(right, predicted)), 4),
        "auc_in_sample": quality["auc"],  # on the answers it was fitted on: how much leaving out costs
        "flagged_right": round(sum(flagged) / len(flagged), 4) if flagged else None,
        "signals": quality["signals"],
        "seconds": round(time.perf_counter() - started, 2),
    }
    return Trial(replace(calibration, kind=STORE_ANSWERS, figures=figures), figures, samples, groups)


def keep(searcher, trial: Trial) -> bool:
    """Record the trial in the collection's history; adopt its calibration when it is better. True if adopted."""
    catalogue = searcher.catalogue
    adopted = trial.better
    history = [*catalogue.record().get(FITS, []), {**trial.figures, "adopted": adopted}][-HISTORY:]
    if adopted:
        catalogue.update_metadata(calibration=trial.calibration.to_metadata(), **{FITS: history})
        searcher.calibration = trial.calibration  # the next search uses it
    else:
        catalogue.update_metadata(**{FITS: history})
    return adopted


def describe(calibration: dict | None, fits: list[dict]) -> list[str]:
    """`indexer info`'s lines: the calibration in force and how it scored, and the last refit."""
    from search.confidence import KINDS

    found = Calibration.from_metadata(calibration)
    scored = found.figures.get("auc") or found.figures.get("auc_in_sample")
    how = "leave-one-photo-out" if "auc" in found.figures else "in sample"
    lines = [f"confidence  {KINDS.get(found.kind, found.kind)}: {found.source}" + (f", AUC {scored} {how}" if scored else "")]
    if fits:
        last = fits[-1]
        lines.append(
            f"refits      {len(fits)}; the last at {last['at']} on {last['answers']} answers: AUC {last.get('auc', last.get('error'))} "
            f"against {last['auc_in_force']} for the one in force, {'adopted' if last['adopted'] else 'not adopted'}"
        )
    return lines


class Refitter:
    """Refits in the background when enough new answers came: `nudge()` after each answer."""

    def __init__(self, searcher, feedback_log, *, min_answers: int, every: int, quiet: float, stop: threading.Event):
        self.searcher = searcher
        self.log = feedback_log
        self.min_answers = min_answers
        self.every = max(1, every)
        self.quiet = quiet
        self._stop = stop
        self._lock = threading.Lock()
        self._nudged = False
        self._last_answer = 0.0
        self.thread: threading.Thread | None = None  # the fitting thread, while one runs

    def nudge(self) -> None:
        """A new answer (or a start): look again soon, on the refit thread (started unless it runs)."""
        if self.min_answers <= 0:
            return
        with self._lock:
            self._nudged = True
            self._last_answer = time.monotonic()
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="refit", daemon=True)
                self.thread.start()

    def due(self) -> bool:
        """Enough answers naming a product, and `every` (or a quarter) more of them than at the last fit."""
        count = labelled(self.log.entries())
        last = (self.searcher.catalogue.record().get(FITS) or [{}])[-1].get("labelled", 0)
        return count >= self.min_answers and count - last >= max(self.every, last // 4)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._nudged or self._stop.is_set():
                    self.thread = None
                    return
                self._nudged = False
            self._wait_for_a_pause()
            try:
                if not self._stop.is_set() and self.due():
                    self.refit()
            except _Stopped:
                pass
            except CatalogueError as exc:
                log.warning("refit: %s", exc)
            except Exception:  # a bug: logged, the server goes on with the calibration it has
                log.exception("refit failed")

    def _wait_for_a_pause(self) -> None:
        """Until no answer came for `quiet` seconds (at most 10 x `quiet`, so a steady stream still gets fits)."""
        deadline = time.monotonic() + 10 * self.quiet
        while not self._stop.is_set():
            left = min(self._last_answer + self.quiet, deadline) - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(left)

    def refit(self) -> Trial:
        trial = try_fit(self.searcher, self.log.entries(newest_first=False), progress=self._halt_if_stopping)
        self._halt_if_stopping()  # a server stopping meanwhile writes nothing more
        adopted = keep(self.searcher, trial)
        f = trial.figures
        log.info(
            "refit on %d answers: AUC %s leave-one-photo-out against %s for the %s calibration in force: %s",
            f["answers"],
            f.get("auc", f.get("error")),
            f["auc_in_force"],
            f["in_force"],
            "adopted" if adopted else "kept the one in force",
        )
        return trial

    def _halt_if_stopping(self, _done: int = 0) -> None:
        if self._stop.is_set():
            raise _Stopped()


class _Stopped(Exception):
    """The server is stopping: the fit is abandoned between two photos."""
