"""The one shard runner every stage flow goes through.

A stage's work is one or more *jobs* (``ShardJob``): a plain function that turns one
input (a shard, a bucket, the whole dataset) into output files and returns a small
report. The runner does the rest, once for every stage:

- each input becomes a Prefect task (cached on its ``Shard.key`` plus the code version
  of what the job runs, retried on transient errors only) that runs the work as a Ray
  task, or on a Ray actor that loaded its state once (``ShardJob.holder``);
- a task whose output files are missing is recomputed even if a cached result exists;
- ``stage_run`` holds the output folder's lock (and removes killed writers' ``.part``
  files), starts Ray, and claims the folder for this run's shards;
- ``StageRun.finish`` writes ``info.json`` and ``report.json``, publishes the artifacts
  and raises ``StageFailed`` listing every input that failed after its retries.
"""

from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import ray
from prefect import get_run_logger, task

from flows.common import SHARD_TASK_OPTIONS, claim_output, gather, output_lock, write_report
from pretrain.config import RayConfig
from pretrain.errors import root_cause
from pretrain.provenance import code_version, stable_hash, write_info_json
from tasks.ray_runtime import cluster_cpus, ensure_ray


class StageFailed(RuntimeError):
    """Some of a stage's tasks failed after their retries; ``report.json`` lists them.

    ``entry`` formats one failure of the listing (dedup's phases list ``input: error``).
    """

    def __init__(self, stage: str, failures: list[dict], total: int, what: str = "shards", prefix: str = "",
                 entry: str = "{input} ({error})", verb: str = "failed"):
        self.stage, self.failures = stage, failures
        listing = "; ".join(entry.format(**f) for f in failures)
        super().__init__(f"{prefix}{len(failures)} of {total} {what} {verb}: {listing}")


@dataclass(frozen=True)
class ShardJob:
    """One kind of task of a stage: ``work(**Shard.args) -> report`` on a Ray worker.

    ``holder``, when given, is a class whose instance (built once per Ray actor from the
    ``holder_args`` given to ``StageRun.map``) is passed to ``work`` as its first argument:
    for state that is expensive to load, such as models. The modules of ``work`` and
    ``holder`` (and ``code``) root the job's code version, which covers everything they
    import.
    """

    name: str  # the Prefect task's name, e.g. "ingest-shard"
    work: Callable[..., dict]
    run_name: str | None = "{name}-{label}"  # each task run's name; {name}: this job's, {label}: the shard's;
    # None: Prefect's own ("<name>-<n>")
    progress: str | None = None  # the progress bar's label (default: the job's name)
    ray_options: dict = field(default_factory=dict)
    holder: type | None = None
    code: tuple[str, ...] = ()

    def modules(self) -> tuple[str, ...]:
        roots = {self.work.__module__, *self.code}
        if self.holder is not None:
            roots.add(self.holder.__module__)
        return tuple(sorted(roots))

    def code_version(self) -> str:
        return code_version(*self.modules())


@dataclass(frozen=True)
class Shard:
    """One task of a job: its work's arguments, what its result depends on, what it writes."""

    label: str  # names the task run ("{label}" in ShardJob.run_name)
    args: dict[str, Any]
    key: tuple = ()  # what the result depends on besides the code: input identity, settings, output paths
    outputs: tuple[Path, ...] = ()  # a missing one forces a recompute
    shown_as: str | None = None  # how a failure names the input (default: the label)

    def cache_key(self, job: ShardJob) -> str:
        return stable_hash(job.name, job.code_version(), *self.key)


def _on_this_node(report: dict) -> dict:
    """A shard's report with ``ray_node_id``: which Ray node ran it (on a cluster, which machine)."""
    return {**report, "ray_node_id": ray.get_runtime_context().get_node_id()} if isinstance(report, dict) else report


def _run_work(work: Callable[..., dict], args: dict) -> dict:
    return _on_this_node(work(**args))


class _Holder:
    """A Ray actor holding one instance of a job's ``holder`` class."""

    def __init__(self, holder: type, args: dict):
        self.state = holder(**args)

    def run(self, work: Callable[..., dict], args: dict) -> dict:
        return _on_this_node(work(self.state, **args))

    def ask(self, question: Callable[[Any], Any]) -> Any:
        return question(self.state)


_REMOTES: dict[str, Any] = {}
# Shard tasks and holder actors go to the nodes in turn ("SPREAD"), not to the submitting node first (Ray's
# default packs a node until half its CPUs are busy): they take paths, not objects, so there is no data to
# be near, and on a cluster each node's disk, network and memory take a share even of a small stage.
SPREAD = {"scheduling_strategy": "SPREAD"}


def _remote(target: Any, defaults: dict, options: dict) -> Any:
    """``target`` as a Ray remote with ``defaults`` overridden by ``options``, made once per option set."""
    merged = {**defaults, **options}
    name = f"{target.__name__}|{sorted(merged.items(), key=lambda item: item[0])!r}"
    if name not in _REMOTES:
        _REMOTES[name] = ray.remote(**merged)(target)
    return _REMOTES[name]


def _shard_key(context, parameters: dict) -> str:
    return parameters["key"]


@task(name="shard", cache_key_fn=_shard_key, **SHARD_TASK_OPTIONS)
def _shard_task(job: ShardJob, args: dict, key: str, actor: Any = None) -> dict:
    """Run one shard's work on Ray; returns its report (never its data)."""
    if actor is not None:
        return ray.get(actor.run.remote(job.work, args))
    remote = _remote(_run_work, {"num_cpus": 1, "max_retries": 3, **SPREAD}, job.ray_options)
    return ray.get(remote.options(name=job.name).remote(job.work, args))  # the worker's title: ray::<job name>


def _task_for(job: ShardJob, shard: Shard):
    """The Prefect task of one shard: named after the job and the shard, recomputed when an output is missing."""
    missing = any(not Path(path).exists() for path in shard.outputs)
    run_name = job.run_name.format(name=job.name, label=shard.label) if job.run_name else None
    return _shard_task.with_options(name=job.name, refresh_cache=missing, task_run_name=run_name)


class StageRun:
    """One run of a stage into its output folder (see ``stage_run``)."""

    def __init__(self, stage: str, out: Path, logger):
        self.stage, self.out, self.logger = stage, out, logger
        self.failures: list[dict] = []
        self.cache_hits: dict[str, int] = {}
        self.stale: list[str] = []
        self.nodes: collections.Counter = collections.Counter()  # Ray node id -> shards it ran (this run's)

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    def claim(self, names, patterns) -> list[str]:
        """Make the folder hold only this run's shards ``names``: the files matching ``patterns`` (globs
        relative to the folder) whose stem is a shard name (``flows.common.claim_output``)."""
        self.stale = claim_output(self.out, self.stage, names, patterns, self.logger)
        return self.stale

    def map(self, job: ShardJob, shards: list[Shard], holder_args: dict | None = None,
            ask: Callable[[Any], Any] | None = None) -> list[dict]:
        """Run every shard of ``job``; the reports of those that succeeded, in completion order.

        A failed shard does not stop the others: its input and cause go to ``failures``.
        With a ``holder`` job, ``ask`` (a function of the holder's state) is answered by
        each actor before it is released; the answers are in ``answers``.
        """
        actors = self._start_holders(job, len(shards), holder_args or {})
        futures = {}
        for index, shard in enumerate(shards):
            actor = actors[index % len(actors)] if actors else None
            futures[_task_for(job, shard).submit(job, shard.args, shard.cache_key(job), actor)] = \
                shard.shown_as or shard.label
        reports, failures, hits = gather(job.progress or job.name, futures, self.logger)
        self.failures += failures
        self.cache_hits[job.name] = self.cache_hits.get(job.name, 0) + hits
        self.nodes.update(r["ray_node_id"] for r in reports if isinstance(r, dict) and "ray_node_id" in r)
        self.answers = ray.get([actor.ask.remote(ask) for actor in actors]) if actors and ask else []
        for actor in actors:
            ray.kill(actor)
        return reports

    def one(self, job: ShardJob, shard: Shard) -> tuple[dict, bool]:
        """Run a job's single task (whole-dataset work the rest of the stage needs): (report, from cache).

        Nothing can go on without it, so a failure is raised at once as the work raised it
        (without Ray's wrapper, as if it had run here), not listed in ``failures``.
        """
        state = _task_for(job, shard)(job, shard.args, shard.cache_key(job), return_state=True)
        try:
            report = state.result()
        except Exception as error:
            raise root_cause(error) from None
        cached = state.name == "Cached"
        self.cache_hits[job.name] = self.cache_hits.get(job.name, 0) + cached
        if isinstance(report, dict) and "ray_node_id" in report:
            self.nodes[report["ray_node_id"]] += 1
        return report, cached

    def _start_holders(self, job: ShardJob, shards: int, args: dict) -> list:
        if job.holder is None or shards == 0:
            return []
        remote = _remote(_Holder, {"num_cpus": 1, "max_restarts": 2, "max_task_retries": 2, **SPREAD}, job.ray_options)
        return [remote.remote(job.holder, args) for _ in range(max(1, min(shards, cluster_cpus())))]

    def hits(self) -> int:
        return sum(self.cache_hits.values())

    def finish(self, summary: dict, *, config: dict, inputs: list[str], code: str, total: int,
               publish: Callable[[dict], None] | None = None, what: str = "shards", publish_failed: bool = True,
               **info: Any) -> dict:
        """Record the run (info.json, report.json, artifacts); raise StageFailed when anything failed."""
        summary.setdefault("stale_removed", self.stale)
        summary.setdefault("ray_nodes", dict(sorted(self.nodes.items())))  # node id -> shard tasks it ran
        write_info_json(self.out, stage=self.stage, code=code, config=config, inputs=inputs, **info)
        write_report(self.out, summary)
        if publish is not None and (publish_failed or not self.failures):
            publish(summary)
        if self.failures:
            raise StageFailed(self.stage, self.failures, total, what)
        return summary


@contextlib.contextmanager
def stage_run(stage: str, output_dir: str | Path, ray_config: RayConfig) -> Iterator[StageRun]:
    """Hold ``output_dir``'s lock, start Ray, and give the run its bookkeeping."""
    with output_lock(Path(output_dir), stage) as out:
        run = StageRun(stage, out, get_run_logger())
        ensure_ray(ray_config)
        yield run
