"""Resumable, parallel per-case work shared by ``volgan prepare bone`` and ``volgan prepare cow``.

A *recipe* is a short hash of everything that decides a case's result (template, ROI, spacing, calibration,
registration settings, file format...). A case is one input scan (with its mask or label map); its *stamp* is the
name, size and modification time of its files. Finished cases are found in two places:

- ``OUT.cache/`` beside the output folder, written while a run is under way: each finished case's files and its
  record (``rows/<case>.json``). A killed or cancelled run leaves it; the next run with the same recipe skips those
  cases. It is removed when the output folder is complete.
- the finished output folder itself: its ``manifest.json`` carries the recipe (``parameters.recipe``) and one record
  per case. Rerunning into it with the same recipe skips every case whose stamp is unchanged and processes only new
  or changed scans; cases whose scan has gone are dropped; the folder is rewritten atomically. Another recipe is
  refused (one line, exit 2) unless ``--overwrite`` is given.

Failed cases are not kept: a rerun tries them again. With ``workers > 1`` the cases run in a process pool; a
cancel (the token, Ctrl-C or a panel's Cancel, which arrives as KeyboardInterrupt) terminates the running workers at
once instead of waiting for them, and the cases finished so far stay in the cache.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Optional

from VolGANCore import VolGANError
from VolGANCore.atomic import atomic_directory, atomic_write_json
from VolGANCore.progress import CancelToken, Progress, ProgressCallback

__all__ = ["file_stamp", "CaseStore"]

POLL_S = 0.2     # how often the parent looks at the cancel token while workers run


def file_stamp(*paths: Optional[Path]) -> list:
    """[[name, size, mtime_ns], ...] of a case's input files: a changed or replaced scan is prepared again."""
    out = []
    for p in paths:
        if p is not None:
            st = Path(p).stat()
            out.append([Path(p).name, int(st.st_size), int(st.st_mtime_ns)])
    return out


def _run_one(job):
    """Worker side: prepare one case; keep a finished one's record in the cache at once (it survives a kill)."""
    fn, item, rows_dir = job
    try:
        record = fn(item)
    except VolGANError as exc:       # as a plain VolGANError: it crosses the process pool (same one-line message)
        raise VolGANError(str(exc)) from None
    if record.get("status") == "ok":
        atomic_write_json(Path(rows_dir) / f"{record['case']}.json", record)
    return record


class CaseStore:
    """Finished cases of one recipe, from the cache of an interrupted run or from a finished output folder.

    ``kind`` is the manifest kind (``prepared-bone``, ``prepared-cow``); ``previous`` turns a finished output's
    manifest into its case records (each with ``case``, ``recipe``, ``stamp``, ``status`` and ``files``: the paths,
    relative to the folder, of the files the case wrote).
    """

    def __init__(self, out: str | os.PathLike, kind: str, recipe: str, overwrite: bool,
                 previous: Callable[[dict], Iterable[dict]], command: str) -> None:
        self.out = Path(out)
        self.kind, self.recipe = kind, recipe
        self.cache = self.out.with_name(self.out.name + ".cache")
        self.rows_dir = self.cache / "rows"
        self.finished: dict[str, dict] = {}          # case -> record of the finished output (same recipe)
        self.previous_doc: Optional[dict] = None     # that output's manifest
        out = self.out
        if out.exists() and not out.is_dir():
            raise VolGANError(f"{out}: exists and is not a folder (choose another output folder)")
        if out.is_dir() and any(out.iterdir()):
            doc = self._manifest(out)
            same = doc is not None and doc.get("kind") == kind and (doc.get("parameters") or {}).get("recipe") == recipe
            if same:
                self.previous_doc = doc
                for rec in previous(doc):
                    if rec.get("recipe") == recipe and rec.get("status", "ok") == "ok":
                        self.finished[rec["case"]] = rec
            elif not overwrite:
                if doc is not None and doc.get("kind") == kind:
                    raise VolGANError(f"{out}: holds a dataset prepared with another recipe (other template, ROI, "
                                      f"spacing, calibration or settings); pass --overwrite to replace it, or choose a "
                                      f"new output folder ({command})")
                raise VolGANError(f"{out}: output folder is not empty (choose a new folder or pass --overwrite)")

    @staticmethod
    def _manifest(folder: Path) -> Optional[dict]:
        try:
            doc = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def done(self, case: str, stamp: list) -> Optional[tuple[dict, Path]]:
        """``(record, folder holding its files)`` of a finished case with this recipe and stamp, else None."""
        path = self.rows_dir / f"{case}.json"
        if path.exists():
            try:
                rec = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                rec = {}
            if rec.get("recipe") == self.recipe and rec.get("stamp") == stamp and self._has_files(rec, self.cache):
                return rec, self.cache
        rec = self.finished.get(case)
        if rec is not None and rec.get("stamp") == stamp and self._has_files(rec, self.out):
            return rec, self.out
        return None

    def reusable(self, cache_name: str, out_name: Optional[str] = None) -> Optional[Path]:
        """A by-product of this recipe kept before (e.g. a built template): in the cache, else in the finished
        output of the same recipe; None when there is none."""
        if (self.cache / cache_name).is_file():
            return self.cache / cache_name
        if out_name is not None and self.previous_doc is not None and (self.out / out_name).is_file():
            return self.out / out_name
        return None

    @staticmethod
    def _has_files(rec: dict, folder: Path) -> bool:
        return all((folder / f).is_file() for f in rec.get("files", []))

    def run(self, fn: Callable[[object], dict], items: list[tuple[str, list, object]], workers: int,
            description: str, progress: Optional[ProgressCallback] = None,
            cancel: Optional[CancelToken] = None) -> dict[str, tuple[dict, Path]]:
        """Prepare every ``(case, stamp, item)`` not finished before with ``fn(item)`` (a module-level function
        returning the case's record; it writes its files under ``self.cache``), ``workers`` at once.

        Returns ``{case: (record, folder of its files)}`` for all items, finished ones marked ``resumed``.
        Progress advances once per case; a cancel raises :class:`Cancelled` (running workers are terminated)."""
        self.rows_dir.mkdir(parents=True, exist_ok=True)
        try:
            return self._run(fn, items, workers, description, progress, cancel)
        except BaseException:
            self._drop_empty_cache()     # nothing finished: no cache folder left behind
            raise

    def _drop_empty_cache(self) -> None:
        if self.cache.is_dir() and not any(p.is_file() for p in self.cache.rglob("*")):
            shutil.rmtree(self.cache, ignore_errors=True)

    def _run(self, fn, items, workers, description, progress, cancel) -> dict[str, tuple[dict, Path]]:
        results: dict[str, tuple[dict, Path]] = {}
        todo = []
        for case, stamp, item in items:
            hit = self.done(case, stamp)
            if hit is not None:
                results[case] = (dict(hit[0], resumed=True), hit[1])
            else:
                todo.append(item)
        with Progress(len(items), description, progress, cancel) as p:
            if results:
                p.advance(len(results), message=f"{len(results)} case(s) done before (same recipe)")
            running = self._iterate(fn, todo, workers, cancel)
            try:
                for rec in running:
                    results[rec["case"]] = (rec, self.cache)
                    p.advance(message=f"{rec['case']}: {rec['status']}" + (f" ({rec['note']})" if rec.get("note") else ""))
            finally:
                running.close()     # a cancel raised by advance: terminate the pool now, not when the traceback goes
        return results

    def _iterate(self, fn, todo: list, workers: int, cancel: Optional[CancelToken]):
        if workers == 1 or len(todo) <= 1:
            for item in todo:
                if cancel is not None:
                    cancel.raise_if_cancelled()
                yield _run_one((fn, item, self.rows_dir))
            return
        pool = multiprocessing.get_context().Pool(min(workers, len(todo)))
        try:
            pending = [pool.apply_async(_run_one, ((fn, item, self.rows_dir),)) for item in todo]
            while pending:
                if cancel is not None:
                    cancel.raise_if_cancelled()
                ready = [r for r in pending if r.ready()]
                if not ready:
                    pending[0].wait(POLL_S)          # short waits: a cancel or KeyboardInterrupt is seen promptly
                    continue
                for r in ready:
                    pending.remove(r)
                    yield r.get()
            pool.close()
            pool.join()
        finally:
            pool.terminate()        # a cancel, an interrupt or an error: stop the running workers now
            pool.join()

    def assemble(self, write: Callable[[Path], None], results: dict[str, tuple[dict, Path]]) -> Path:
        """Build the output folder atomically: the cases' files (hard links where possible) from the cache or the
        previous output, then ``write(tmp)`` (manifest, QC page...); replace ``out``; drop the cache."""
        with atomic_directory(self.out, overwrite=True) as tmp:
            for rec, folder in results.values():
                if rec.get("status") != "ok":
                    continue
                for rel in rec.get("files", []):
                    dest = tmp / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.link(folder / rel, dest)
                    except OSError:
                        shutil.copy2(folder / rel, dest)
            write(tmp)
        shutil.rmtree(self.cache, ignore_errors=True)
        return self.out
