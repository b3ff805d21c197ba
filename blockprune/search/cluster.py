"""Scoring on Ray: one model replica per worker, the search and the store stay in this process.

`--workers N` starts N workers on this machine (one per GPU on a GPU machine; on CPU, processes
that split the cores between them); `--ray-address ADDR` joins a running cluster (`ray start
--head` on one machine, `ray start --address=HEAD:6379` on the others) and starts one worker per
GPU of the cluster, or per machine on CPU clusters. Each worker is a Ray actor that loads the
model on its own device and runs the same engine as one process does; a generative task's
samples are decoded there too (its prompts, stop strings and limits travel as a
`gen_task.Decoder`; the dense continuation is decoded once, by the driver).

The driver (this process) keeps the search: it cuts each step into work units (blockprune.search.shard),
hands a worker one unit at a time (its own samples' units first, then the biggest left over), and
stores each unit's result as it arrives; it is the only writer of the run directory. A worker that
dies mid-unit (its process killed, its machine lost) is dropped and its unit goes back to the
queue for another; nothing it did is stored, so nothing is stored twice. If the driver dies, the
store holds every finished unit and the same command resumes from there.

Ray is imported only here, and only when one of the two flags is given.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Callable, Iterator, Sequence

import numpy as np

from . import shard
from ..engine import Engine, Scores, Work
from ..tasks.kinds import generates, needs_dense


class ClusterError(Exception):
    """Ray cannot be used as asked (one-line message)."""


def check_options(workers: int | None, address: str | None) -> None:
    """Before anything loads: the flags make sense and Ray is installed."""
    if workers is None and not address:
        return
    if workers is not None and workers < 1:
        raise ClusterError("--workers must be at least 1")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ClusterError("--workers / --ray-address need Ray: pip install 'blockprune[ray]'") from None
    if address and address not in ("auto", "local"):
        _check_reachable(address)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Ray retries an unreachable HOST:PORT for minutes without a word: try it once first."""
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray-address {address!r}: expected HOST:PORT (the head's, e.g. 10.0.0.1:6379) or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach a Ray cluster at {hostport}: {exc.strerror or exc}; start one with "
                           "`ray start --head` there (and `ray start --address=HOST:PORT` on the other machines)") from None


def placement(resources: dict, nodes: int, workers: int | None, device: str | None) -> tuple[int, bool, int | None]:
    """(workers, on GPUs, torch threads per worker) for a cluster's resources. GPUs (unless
    --device cpu): one worker per GPU, all of them by default. CPUs: the cores split evenly, one
    worker per machine by default."""
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    use_gpu = gpus > 0 and (device is None or str(device).startswith("cuda"))
    if workers is None:
        workers = gpus if use_gpu else max(1, nodes)
    if use_gpu:
        if workers > gpus:
            raise ClusterError(f"--workers {workers}, but the cluster has {gpus} GPU(s): one worker per GPU")
        return workers, True, None
    if workers > cpus:
        raise ClusterError(f"--workers {workers}, but the cluster has {cpus} CPU(s): at least one each")
    return workers, False, max(1, cpus // workers)


class _Worker:
    """The actor (wrapped by `_actor_class`): a model replica and an engine."""

    def __init__(self, index: int, model: str, device: str, dtype: str, threads: int | None, budget: int | None):
        import torch

        from .. import models
        from ..models.sources import DTYPES

        if threads:
            torch.set_num_threads(threads)
        self.index = index
        self.tokens = 0
        self.tasks: dict[str, tuple[list, bool, object]] = {}  # name -> (requests, needs KL, Decoder or None)
        bm = models.load(model, device=device, dtype=DTYPES[dtype])
        self.engine = Engine(bm, budget_bytes=budget)
        self.tokenizer = bm.tokenizer
        self.about = {"worker": index, "host": socket.gethostname(), "pid": os.getpid(), "device": str(bm.device),
                      "threads": torch.get_num_threads(), "num_blocks": bm.num_blocks}

    def info(self) -> dict:
        return self.about

    def probe(self, requests) -> list[float]:
        """Dense log-probs of a few requests: the driver checks every replica is the same model."""
        keep = np.ones((1, self.engine.model.num_blocks), dtype=bool)
        return self.engine.score(requests, keep).logprob[0].tolist()

    def add_tasks(self, tasks: dict) -> None:
        self.tasks.update(tasks)

    def set_healing(self, fitted: dict | None, probe, keep: np.ndarray) -> list[float]:
        """Score healed with the driver's fitted statistics (blockprune.healing.heal; None: plain); returns
        the log-probs of `probe` under `keep`, for the driver to check against its own."""
        from ..healing.heal import Healing

        self.engine.heal = None if fitted is None else Healing(self.engine.model, **fitted)
        if self.engine.cache is not None:
            self.engine.cache.retain(np.zeros((0, self.engine.model.num_blocks), dtype=np.int16))
        return self.engine.score(probe, keep).logprob[0].tolist()

    def score(self, task: str, req_ids: list[int], masks: np.ndarray, samples: list[int] | None = None) -> dict:
        """Score the requests under every set of `masks`; a generative task's `samples` are also
        decoded under every set (blockprune.engine.decode), as the driver's LocalRunner does."""
        requests, dense, decoder = self.tasks[task]
        start = time.perf_counter()

        def count(n: int) -> None:
            self.tokens += n

        res = self.engine.score([requests[r] for r in req_ids], masks, progress=count, kl=dense)
        generated = None if decoder is None else (samples, decoder.generate(self.engine, self.tokenizer, masks, samples))
        return {"logprob": res.logprob, "greedy": res.greedy, "kl": res.kl, "work": res.work.__dict__,
                "seconds": time.perf_counter() - start, "worker": self.index, "generated": generated}

    def retain(self, masks: np.ndarray) -> None:
        self.engine.retain(masks)

    def progress(self) -> int:
        return self.tokens


def _actor_class():
    import ray

    class Worker(_Worker):
        @ray.method(concurrency_group="io")  # answers from its own thread while score() runs
        def progress(self) -> int:
            return self.tokens

    # every other method runs one at a time, in the default group
    return ray.remote(concurrency_groups={"io": 1})(Worker)


def _dead(exc: BaseException) -> bool:
    """The worker (or its machine) is gone, as opposed to an error in the unit itself."""
    import ray.exceptions as rex

    return isinstance(exc, (rex.RayActorError, rex.ActorUnavailableError, rex.WorkerCrashedError, rex.NodeDiedError,
                            rex.LocalRayletDiedError, rex.ObjectLostError))


class Pool:
    """A runner (see shard.LocalRunner) whose units run on Ray workers."""

    MAX_TRIES = 3  # a unit whose worker died this many times is not tried again (it may be what kills them)
    kill_hook = None  # tests: called as hook(pool, worker, unit) after each unit is handed out (fault injection)

    def __init__(self, model: str, dtype: str, workers: int | None = None, address: str | None = None,
                 device: str | None = None, budget_bytes: int | None = None, batch_candidates: int = 256):
        """Join (or start) Ray and start the workers, which load the model while this process does
        its own loading; `setup` then waits for them."""
        import ray

        self.engine: Engine | None = None
        self.batch_candidates = batch_candidates
        self.started_ray = False
        self.actors: list = []
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
                else:
                    import torch

                    ray.init(num_cpus=os.cpu_count() or 1, num_gpus=torch.cuda.device_count(), include_dashboard=False,
                             log_to_driver=False, logging_level="ERROR")
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ClusterError(f"cannot reach a Ray cluster at {address or 'a new local one'}: "
                                   f"{_first_line(exc)}") from None
            self.started_ray = True
        self.address = address or "local"
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        try:
            workers, use_gpu, self.threads = placement(ray.cluster_resources(), nodes, workers, device)
        except ClusterError:
            self.close()
            raise
        actor = _actor_class().options(num_gpus=1 if use_gpu else 0, num_cpus=1 if use_gpu else self.threads,
                                       max_restarts=0)
        model_spec = str(os.path.abspath(model)) if os.path.exists(model) else model
        self.actors = [actor.remote(i, model_spec, "cuda" if use_gpu else "cpu", dtype, self.threads, budget_bytes)
                       for i in range(workers)]
        self.alive = list(range(workers))
        self.bins: dict[str, list[int]] = {}
        self.stats = {i: {"worker": i, "units": 0, "block_tokens": 0, "busy_seconds": 0.0} for i in range(workers)}
        self.retried = 0
        self.lost: list[dict] = []
        self.on_step: Callable[[dict], None] | None = None
        self._seen_tokens = {i: 0 for i in range(workers)}

    @property
    def workers(self) -> int:
        return len(self.actors)

    # ---- set-up ---------------------------------------------------------------------------
    def setup(self, engine: Engine, tasks: Sequence) -> None:
        """Wait for the replicas, check they are the driver's model (`engine`'s), and give them the
        tasks' requests."""
        import ray

        self.engine = engine
        try:
            infos = ray.get([a.info.remote() for a in self.actors])
        except Exception as exc:  # noqa: BLE001 - a worker that cannot load the model
            raise ClusterError(f"a Ray worker could not load the model: {_first_line(exc)}") from None
        for info in infos:
            self.stats[info["worker"]].update({k: info[k] for k in ("host", "pid", "device", "threads")})
            if info["num_blocks"] != self.engine.model.num_blocks:
                raise ClusterError(f"worker {info['worker']} on {info['host']} loaded a model with {info['num_blocks']} "
                                   f"blocks, this process {self.engine.model.num_blocks}: not the same model")
        probe = [r for t in tasks for r in t.requests[:1]][:4]
        want = self.engine.score(probe, np.ones((1, self.engine.model.num_blocks), dtype=bool)).logprob[0]
        for info, got in zip(infos, ray.get([a.probe.remote(probe) for a in self.actors])):
            if not np.allclose(got, want, rtol=1e-3, atol=1e-3):
                raise ClusterError(f"worker {info['worker']} on {info['host']} scores differently from this process "
                                   f"(dense log-prob {got[0]:.4f} vs {want[0]:.4f}): not the same model or weights")
        for t in tasks:  # a generative task's dense continuation is decoded here, once, and shipped as requests
            if generates(t):
                t.prepare(engine)
        payload = ray.put({t.name: (t.requests, needs_dense(t), t.decoder() if generates(t) else None) for t in tasks})
        ray.get([a.add_tasks.remote(payload) for a in self.actors])
        if engine.heal is not None:  # the driver's statistics (one dense pass), not one fit per worker
            h = engine.heal
            fitted = ray.put({"stats": h.stats, "max_run": h.max_run, "ridge": h.ridge, "calibration": h.calibration,
                              "unfoldable": h.unfoldable})
            keep = np.ones((1, engine.model.num_blocks), dtype=bool)
            run = next(((i, n) for (i, n) in sorted(h.stats.cross) if i + n < engine.model.num_blocks), None)
            if run is not None:
                keep[0, run[0] + 1 : run[0] + run[1] + 1] = False
            want = engine.score(probe, keep).logprob[0]
            for info, got in zip(infos, ray.get([a.set_healing.remote(fitted, probe, keep) for a in self.actors])):
                if not np.allclose(got, want, rtol=1e-3, atol=1e-3):
                    raise ClusterError(f"worker {info['worker']} on {info['host']} scores a healed set differently from "
                                       f"this process (log-prob {got[0]:.4f} vs {want[0]:.4f})")
        for t in tasks:
            per_sample = np.zeros(t.n, dtype=np.int64)
            for r, s in enumerate(t.request_sample):
                per_sample[s] += len(t.requests[r].tokens)
            self.bins[t.name] = shard.sample_bins(per_sample.tolist(), self.workers)

    # ---- the runner interface -------------------------------------------------------------
    def units(self, jobs) -> list[shard.Unit]:
        return shard.plan_units(self.engine, jobs, len(self.alive), self.batch_candidates, self.bins)

    def _pick(self, worker: int, pending: list[shard.Unit]) -> shard.Unit:
        own = [u for u in pending if u.home == worker]
        unit = max(own or pending, key=lambda u: (u.cost, -u.id))
        pending.remove(unit)
        return unit

    def run(self, units: Sequence[shard.Unit], progress: Callable[[int], None] | None) -> Iterator[tuple[shard.Unit, Scores]]:
        import ray

        pending = list(units)
        inflight: dict = {}  # ref -> (unit, worker)
        busy: set[int] = set()
        while pending or inflight:
            for w in [w for w in self.alive if w not in busy]:
                if not pending:
                    break
                unit = self._pick(w, pending)
                task = unit.task
                samples = None
                if generates(task):  # the unit's samples decoded under every set, as LocalRunner does
                    samples = list(range(task.n)) if unit.samples is None else sorted(int(s) for s in unit.samples)
                ref = self.actors[w].score.remote(task.name, unit.req_ids,
                                                  shard.masks_of(unit.sets, self.engine.model.num_blocks), samples)
                inflight[ref] = (unit, w)
                busy.add(w)
                if self.kill_hook is not None:
                    self.kill_hook(w, unit)
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5 if progress else None)
            if progress is not None:
                self._poll(progress)
            for ref in ready:
                unit, w = inflight.pop(ref)
                busy.discard(w)
                try:
                    out = ray.get(ref)
                except Exception as exc:  # noqa: BLE001
                    if not _dead(exc):
                        raise ClusterError(f"worker {w} failed on {unit.task.name}: {_first_line(exc)}") from None
                    self._lose(w, unit, exc)
                    unit.tries += 1
                    if unit.tries >= self.MAX_TRIES:
                        raise ClusterError(f"a unit of {unit.task.name} ({len(unit.sets)} sets) lost {unit.tries} workers; "
                                           "stopping (rerun the same command to resume)") from None
                    self.retried += 1
                    pending.append(unit)
                    continue
                work = Work(**out["work"])
                stat = self.stats[w]
                stat["units"] += 1
                stat["block_tokens"] += work.block_tokens
                stat["busy_seconds"] += out["seconds"]
                unit.meta = {"seconds": round(out["seconds"], 3), "worker": w, **({"retried": unit.tries} if unit.tries else {})}
                yield unit, Scores(out["logprob"], out["greedy"], work, out["kl"], out.get("generated"))

    def _poll(self, progress: Callable[[int], None]) -> None:
        """Add what every worker scored since the last poll to the cluster's bar."""
        import ray

        refs = {w: self.actors[w].progress.remote() for w in self.alive}
        for w, ref in refs.items():
            try:
                seen = ray.get(ref, timeout=2)
            except Exception:  # noqa: BLE001 - a dying worker is found through its unit
                continue
            if seen > self._seen_tokens[w]:
                progress(seen - self._seen_tokens[w])
                self._seen_tokens[w] = seen

    def _lose(self, w: int, unit: shard.Unit, exc: BaseException) -> None:
        if w in self.alive:
            self.alive.remove(w)
            self.lost.append({"worker": w, "host": self.stats[w].get("host"), "error": _first_line(exc)})
            print(f"blockprune: warning: Ray worker {w} ({self.stats[w].get('host')}) died; its unit of "
                  f"{unit.task.name} goes to another worker", file=sys.stderr)
        if not self.alive:
            raise ClusterError(f"all {self.workers} Ray workers died; rerun the same command to resume")

    def retain(self, masks: np.ndarray) -> None:
        for w in self.alive:
            self.actors[w].retain.remote(masks)

    def after_step(self) -> None:
        if self.on_step is not None:
            self.on_step(self.summary())

    def summary(self) -> dict:
        workers = []
        for w, s in sorted(self.stats.items()):
            rate = s["block_tokens"] / s["busy_seconds"] if s["busy_seconds"] else 0.0
            workers.append({**s, "busy_seconds": round(s["busy_seconds"], 2), "block_tokens_per_s": round(rate, 1),
                            "alive": w in self.alive})
        return {"address": self.address, "workers": workers, "units": sum(s["units"] for s in self.stats.values()),
                "retried_units": self.retried, "lost_workers": self.lost}

    def close(self) -> None:
        """Stop the workers (and Ray, when this process started it); a second call does nothing."""
        import ray

        if getattr(self, "_closed", False):
            return
        self._closed = True
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001
                pass
        if self.started_ray:
            ray.shutdown()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ", "ray::")):
            return line[:300]
    return type(exc).__name__
