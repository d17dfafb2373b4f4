"""`--dask`: slide blocks, tiles and fold trainings as tasks on a Dask (distributed) cluster.

`local:N` starts a `distributed.LocalCluster` of N worker processes on this machine (their
TensorFlow threads split the cores between them); `tcp://HOST:PORT` joins a running scheduler
(on SLURM or PBS, dask-jobqueue is the documented way to start one). Workers read the inputs and
write tile outputs themselves, so every path must mean the same file on every worker (one
machine, or a shared file system as on an HPC cluster).

Each worker loads the models once (`ModelSet.load` keeps them per process); slide blocks come
back to this process in block order, where nuclei are given to blocks and the files are
written exactly as in a single-process run (nucseg.prediction.slides.predict), so the files are
the same. A task that raises an input error fails its image, not the batch; a worker that dies
is replaced and its task re-run by Dask (up to `distributed.scheduler.allowed-failures` times),
then the image fails with one line.
"""
from __future__ import annotations

import os
import re
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from nucseg.io import InputError

CONNECT_TIMEOUT = "10s"
DASK_HELP = ("Run on Dask: 'local:N' starts N worker processes here, 'tcp://HOST:PORT' uses a "
             "running scheduler (paths must be the same on every worker). Slides are spread "
             "block by block, tiles file by file; the files equal a single-process run.")


def parse_dask(spec: str) -> tuple[str, object]:
    """('local', N) or ('address', 'tcp://HOST:PORT') for a --dask value."""
    spec = str(spec).strip()
    match = re.fullmatch(r"local:(\d+)", spec)
    if match:
        workers = int(match.group(1))
        if workers < 1:
            raise ValueError(f"--dask {spec}: a local cluster needs at least 1 worker")
        return "local", workers
    if re.fullmatch(r"(tcp|tls|inproc|ucx)://\S+", spec):
        return "address", spec
    raise ValueError(f"--dask {spec}: expected local:N or a scheduler address tcp://HOST:PORT")


def worker_environment(workers: int) -> dict[str, str]:
    """Per local worker: the machine's cores split between the workers, so N TensorFlow
    processes do not each start a thread per core; GPU memory taken as needed, so workers
    sharing a GPU do not each reserve all of it."""
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    return {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": "1",
            "OMP_NUM_THREADS": threads, "TF_CPP_MIN_LOG_LEVEL": "2",
            "TF_FORCE_GPU_ALLOW_GROWTH": "true"}


@contextmanager
def dask_client(spec: str):
    """A distributed.Client for a --dask value; a local cluster is closed afterwards."""
    import logging

    from distributed import Client, LocalCluster

    kind, value = parse_dask(spec)
    cluster = None
    if kind == "local":
        cluster = LocalCluster(n_workers=value, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR,
                               env=worker_environment(value))
        client = Client(cluster)
    else:
        try:
            client = Client(value, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise ValueError(f"--dask {value}: cannot reach the Dask scheduler "
                             f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                             ) from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ---------------------------------------------------------------------------------------------
# the models, loaded once per worker process
# ---------------------------------------------------------------------------------------------
def load_detectors(specs, batch_size: int = 1, overrides: tuple = (), distance_model=None,
                   precision: str = "float32"):
    """(detectors, distance U-Net or None) from model files: what `nucseg predict` loads."""
    from nucseg.model_files import load_model

    unet = None
    if distance_model is not None:
        from nucseg.unet import load_unet

        unet = load_unet(distance_model)
    return [load_model(s, batch_size, precision, **dict(overrides)) for s in specs], unet


@dataclass(frozen=True)
class ModelSet:
    """What a worker needs to load the models itself: a loader and its (picklable) arguments,
    not the loaded models. The default loader reads model files (load_detectors)."""

    args: tuple
    loader: Callable = load_detectors

    def load(self):
        """(detectors, distance U-Net or None), loaded at the first call in this process."""
        global MODEL_LOADS
        key = (getattr(self.loader, "__module__", ""), getattr(self.loader, "__qualname__", ""),
               repr(self.args))
        with _LOCK:                         # a worker with several threads loads once
            if key not in _LOADED:
                _LOADED.clear()             # one model set per worker at a time
                _LOADED[key] = self.loader(*self.args)
                MODEL_LOADS += 1
            return _LOADED[key]


_LOCK = threading.Lock()
_LOADED: dict = {}
MODEL_LOADS = 0                             # per process: a test asks each worker for it
_SLIDES: dict = {}


def _worker_sources(models: ModelSet, sources):
    from nucseg.prediction.channels import ChannelSources

    detectors, unet = models.load()
    sources = replace(sources or ChannelSources(), distance_model=unet)
    return detectors, sources


def _block_task(models: ModelSet, sources, path: str, mpp, frame, block, opts):
    """On a worker: one slide block -> (Merged, detections, timings)."""
    from nucseg.prediction.slides.predict import SlideReader, predict_block

    detectors, sources = _worker_sources(models, sources)
    key = (path, mpp)
    if key not in _SLIDES:
        for reader in _SLIDES.values():
            reader.reader.close()
        _SLIDES.clear()
        _SLIDES[key] = SlideReader(Path(path), mpp)
    timings: dict = {}
    merged, detections = predict_block(_SLIDES[key], frame, block, detectors, opts, sources,
                                       timings)
    return merged, detections, timings


def _tile_task(models: ModelSet, sources, path: str, outdir: str, opts, records, slide_opts):
    """On a worker: predict one tile and write its files (as nucseg.prediction.predict)."""
    from nucseg.prediction.predict import predict_image

    detectors, sources = _worker_sources(models, sources)
    predict_image(path, detectors, outdir, opts, sources, records, slide_opts)
    return path


@dataclass
class DaskWork:
    """A client plus the models its workers load: what predict_images/predict_slide and
    fold_training.train_folds take as `dask=`."""

    client: object
    models: ModelSet | None = None
    sources: object = None                 # ChannelSources without the loaded U-Net
    ahead_per_worker: int = 2               # blocks in flight per worker (memory bound)

    def workers(self) -> int:
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def blocks(self, path, mpp, frame, blocks, opts, timings: dict):
        """Yield (Merged, detections) for `blocks` in their order, computed on the workers
        with a bounded number in flight; the workers' timings are added to `timings`."""
        path = str(path)
        window = deque()
        todo = iter(blocks)
        limit = self.ahead_per_worker * self.workers()

        def submit():
            block = next(todo, None)
            if block is not None:
                window.append((block, self.client.submit(
                    _block_task, self.models, self.sources, path, mpp, frame, block, opts,
                    pure=False)))

        for _ in range(limit):
            submit()
        try:
            while window:
                block, future = window.popleft()
                merged, detections, worker_timings = _result(future, path,
                                                             f"block {block.name}")
                for name, seconds in worker_timings.items():
                    timings[name] = timings.get(name, 0.0) + seconds
                submit()
                yield merged, detections
        finally:
            for _, future in window:
                future.cancel()

    def tiles(self, paths, outdir, opts, records, slide_opts, progress=True) -> list[str]:
        """Predict tiles as tasks (each worker writes its tiles' files); returns the error
        lines of the tiles that failed."""
        import sys

        from distributed import as_completed
        from tqdm import tqdm

        futures = {self.client.submit(_tile_task, self.models, self.sources, str(p),
                                      str(outdir), opts, records, slide_opts, pure=False): p
                   for p in paths}
        failures = []
        with tqdm(total=len(futures), desc="predict", unit="file", file=sys.stderr,
                  disable=not progress or len(futures) < 2) as bar:
            for future in as_completed(futures):
                try:
                    _result(future, futures[future], "")
                except InputError as exc:
                    failures.append(str(exc))
                    tqdm.write(f"error: {exc}", file=sys.stderr)
                bar.update()
        return sorted(failures)

    def map(self, fn: Callable, calls: list[tuple], names: list[str]) -> list:
        """fn(*call) for every call as parallel tasks (as many at once as there are workers);
        the results in the calls' order. `names` name each call in an error line."""
        futures = [self.client.submit(fn, *call, pure=False) for call in calls]
        return [_result(f, name, "") for f, name in zip(futures, names)]


def _result(future, path, what: str):
    """future.result(), with a worker's death as one InputError line for `path`."""
    from distributed.scheduler import KilledWorker

    try:
        return future.result()
    except KilledWorker:
        raise InputError(path, f"{what + ': ' if what else ''}a Dask worker died running it, "
                               "each time it was retried (out of memory?)") from None
