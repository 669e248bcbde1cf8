"""``lvr1 eval --ray``: the questions of a run answered by Ray actors on a cluster.

Ray is optional (``pip install 'longvideo-r1[dist]'``) and imported only here,
only when a run asks for it. This module is an :class:`~longvideo_r1.evaluation.jobs.Engine`:
the evaluator plans, writes every record and reports exactly as it does for
threads, so resuming, ``--retry-failed``, ``--limit``, the manifest check and
``lvr1 report`` behave the same. What is particular to a cluster:

* A worker is an actor, not a task per question: it keeps its reasoning
  backend (an embedded model loads once, and llama.cpp keeps the KV cache of
  the conversation so far) and its open videos between questions, like a
  thread of the local path. It builds them on its own node from the driver's
  :class:`~longvideo_r1.config.Settings` (embedded models, or the same
  OpenAI-compatible endpoints).
* The driver hands each actor one question at a time and the next one to
  whichever finishes first: a slow question holds no queue behind it, and a
  Ctrl-C leaves nothing queued on the cluster.
* Actors return :class:`~longvideo_r1.evaluation.jobs.Answered` results; the
  driver writes them into ``--out`` as they arrive, so only the driver's
  machine needs to see the output folder, and a killed driver keeps every
  record it wrote.
* An actor whose process dies (out of memory, a crash in native code, a lost
  node) costs only the question it was answering: that question gets a failed
  record naming the worker and node, Ray restarts the actor, and the run goes
  on. A call that raises past the harness is a failed record too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from longvideo_r1 import __version__
from longvideo_r1.agent.navigator import describe_failure
from longvideo_r1.config import ROLES
from longvideo_r1.errors import ConfigError, LVR1Error, one_line
from longvideo_r1.evaluation.jobs import Answered, Job
from longvideo_r1.evaluation.records import RunWhere, failed_record
from longvideo_r1.llm.embedded import default_threads
from longvideo_r1.questions.schema import Question

INSTALL_HINT = "pip install 'longvideo-r1[dist]'"


def import_ray() -> Any:
    """The ``ray`` module, or a one-line refusal saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


class EvalWorker:
    """The body of one Ray actor: a worker of the evaluator, on whichever node Ray placed it.

    It runs with two threads (``max_concurrency=2``) so that :meth:`interrupt`
    reaches a question in progress, which then stops between rounds as it
    does on Ctrl-C in the thread path. The driver never sends it two
    questions at once.
    """

    def __init__(self, job: Job, index: int, cpus: float) -> None:
        self.job = job
        self.stop = threading.Event()
        # An embedded model gets the CPUs this actor reserved, not every core of the node.
        sharing = max(1, default_threads() // max(1, int(cpus)))
        self.worker = job.worker(index, sharing)
        self.node = socket.gethostname()

    def ready(self) -> dict[str, str | None]:
        """Load the reasoning model; say where this worker runs and what it runs."""
        return {"node": self.node, "version": __version__, "reasoning": self.worker.load()}

    def answer(self, question: Question) -> Answered | None:
        answered = self.job.answer(question, self.worker, self.stop)
        if answered is not None:
            answered.record.node = self.node
        return answered

    def interrupt(self) -> None:
        self.stop.set()


@dataclass
class _Call:
    """A call in flight: a question being answered, or a restarted actor loading its models."""

    kind: Literal["answer", "ready"]
    actor: int
    question: Question | None
    started: float


class RayEngine:
    """The evaluator's workers as Ray actors; see the module's docstring for the why."""

    def __init__(
        self, job: Job, *, address: str, workers: int | None, cpus: float, stop: threading.Event
    ) -> None:
        self.ray = import_ray()
        self.job = portable(job)
        self.address = address
        self.workers = workers
        self.cpus = cpus
        self.stop = stop
        self.size = 0
        self.owns = False
        self.actors: list[Any] = []
        self.nodes: dict[int, str] = {}
        self.free: deque[int] = deque()
        self.gone: dict[int, str] = {}
        self.queue: deque[Question] = deque()
        self.inflight: dict[Any, _Call] = {}
        self._handing: Answered | None = None

    @property
    def where(self) -> RunWhere:
        return RunWhere(engine="ray", workers=self.size, nodes=len(set(self.nodes.values())))

    # start -------------------------------------------------------------------------------

    def start(self) -> str | None:
        ray = self.ray
        if not ray.is_initialized():
            self._connect()
        total = float(ray.cluster_resources().get("CPU", 0))
        self.size = self.workers or max(1, int(total // self.cpus))
        if self.size * self.cpus > total:
            raise ConfigError(
                f"{self.size} Ray workers of {self.cpus:g} CPUs each need "
                f"{self.size * self.cpus:g} CPUs, and the cluster has {total:g}: "
                "lower --workers or --ray-cpus, or add nodes"
            )
        actor_class = ray.remote(EvalWorker).options(
            num_cpus=self.cpus,
            max_concurrency=2,  # answer() and interrupt()
            max_restarts=-1,  # a crash costs one question, never the worker
            max_task_retries=0,  # ... and that question is recorded, not run twice
            scheduling_strategy="SPREAD",
        )
        self.actors = [actor_class.remote(self.job, i, self.cpus) for i in range(self.size)]
        try:
            infos = ray.get([actor.ready.remote() for actor in self.actors])
        except ray.exceptions.RayError as exc:
            raise ConfigError(f"a Ray worker could not start: {_reason(exc)}") from None
        for i, info in enumerate(infos):
            if info["version"] != __version__:
                raise ConfigError(
                    f"node {info['node']} runs longvideo-r1 {info['version']} and this driver "
                    f"{__version__}: install the same version on every node"
                )
            if info["reasoning"] != infos[0]["reasoning"]:
                raise ConfigError(
                    f"node {info['node']} loaded reasoning model {info['reasoning']}, node "
                    f"{infos[0]['node']} {infos[0]['reasoning']}: the nodes must run the same model"
                )
            self.nodes[i] = str(info["node"])
        self.free.extend(range(self.size))
        return infos[0]["reasoning"]

    def _connect(self) -> None:
        """Start a local cluster (``local``) or join one (``auto`` or an address)."""
        ray = self.ray
        # Workers' output stays in Ray's logs on their nodes, out of the progress bar's way.
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
        if self.address == "local":
            options["include_dashboard"] = False
        head = os.environ.get("RAY_ADDRESS") if self.address == "auto" else self.address
        if head and head not in ("local", "auto"):
            _check_head(head)  # Ray itself retries an unreachable head for minutes
        try:
            ray.init(address=self.address, **options)
        except ConnectionError as exc:
            if self.address == "auto":
                raise ConfigError(
                    "--ray auto found no Ray cluster started on this machine: run `ray start "
                    "--head` first, give --ray HOST:PORT, or --ray alone for a local one"
                ) from None
            raise ConfigError(f"cannot join the Ray cluster at {head}: {_one_line(exc)}") from None
        except (ValueError, RuntimeError, TimeoutError) as exc:
            where = "start Ray on this machine" if self.address == "local" else f"join {head}"
            raise ConfigError(f"cannot {where}: {_one_line(exc)}") from None
        self.owns = True

    # run ---------------------------------------------------------------------------------

    def results(self, todo: Sequence[Question]) -> Iterator[Answered]:
        self.queue.extend(todo)
        while self.queue or self._answering():
            self._dispatch()
            if not self.inflight:
                raise LVR1Error(
                    f"every Ray worker is gone ({'; '.join(sorted(set(self.gone.values())))}); "
                    f"{len(self.queue)} questions were not run: run again to go on"
                )
            yield from self._arrivals(list(self.inflight))

    def drain(self) -> Iterator[Answered]:
        if self._handing is not None:  # Ctrl-C came while the driver was writing it
            yield self._handing
            self._handing = None
        self.queue.clear()
        for call in self.inflight.values():
            if call.kind == "answer":
                with contextlib.suppress(Exception):
                    self.actors[call.actor].interrupt.remote()
        while self._answering():
            yield from self._arrivals(self._answering())

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor, no_restart=True)
        self.actors = []
        if self.owns:
            self.ray.shutdown()
            self.owns = False

    def _answering(self) -> list[Any]:
        return [ref for ref, call in self.inflight.items() if call.kind == "answer"]

    def _dispatch(self) -> None:
        """A question to every free worker, until there are none or Ctrl-C was pressed."""
        while self.free and self.queue and not self.stop.is_set():
            question = _absolute_subtitles(self.queue[0])
            with _sigint_held():  # a call sent is a call tracked, or drain() would miss it
                i = self.free.popleft()
                self.queue.popleft()
                ref = self.actors[i].answer.remote(question)
                self.inflight[ref] = _Call("answer", i, question, time.perf_counter())

    def _arrivals(self, refs: list[Any]) -> Iterator[Answered]:
        """The results among ``refs`` that are ready within a second (so Ctrl-C is seen)."""
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=1.0)
        for ref in ready:
            answered = self._collect(ref)
            if answered is not None:
                self._handing = answered
                yield answered
                self._handing = None

    def _collect(self, ref: Any) -> Answered | None:
        """A finished call's result; a worker that died or raised becomes a failed record."""
        ray = self.ray
        call = self.inflight[ref]
        try:
            value = ray.get(ref)  # a Ctrl-C here leaves the call in flight, for drain()
        except ray.exceptions.RayActorError as exc:
            del self.inflight[ref]
            if call.kind == "ready":
                self.gone[call.actor] = _reason(exc)
                return None
            self._restart(call.actor)
            return self._failed(call, f"died while answering it ({_death(exc)})")
        except ray.exceptions.RayError as exc:
            del self.inflight[ref]
            if call.kind == "ready":
                self.gone[call.actor] = _reason(exc)
                return None
            self.free.append(call.actor)
            return self._failed(call, f"failed: {_reason(exc)}")
        del self.inflight[ref]
        if call.kind == "ready":
            self.nodes[call.actor] = str(value["node"])
        self.free.append(call.actor)
        return value

    def _restart(self, actor: int) -> None:
        """Ray restarts a dead actor; it takes questions again once its models are loaded."""
        if self.stop.is_set():
            return
        ref = self.actors[actor].ready.remote()
        self.inflight[ref] = _Call("ready", actor, None, time.perf_counter())

    def _failed(self, call: _Call, what: str) -> Answered:
        assert call.question is not None
        node = self.nodes.get(call.actor, "?")
        record = failed_record(
            call.question,
            self.job.method.name,
            self.job.method.variant,
            "error",
            f"Ray worker {call.actor} on {node} {what}",
            time.perf_counter() - call.started,
        )
        record.worker = call.actor
        record.node = node
        return Answered(record)


def portable(job: Job) -> Job:
    """The job as a node other than this one must read it.

    A worker's working directory is not the driver's, so relative paths
    (``--videos data/videos``, ``--store cache.sqlite``) are made absolute
    here. An API key that the driver takes from ``OPENAI_API_KEY`` is written
    into the settings, so nodes need no environment of their own. A store
    path starting with ``~`` and an unset store stay as they are: each node
    resolves them to its own home, which keeps one SQLite file per node.
    """
    settings = job.settings
    update: dict[str, Any] = {}
    store = settings.store
    if store is not None and not str(store).startswith("~") and not store.is_absolute():
        update["store"] = store.absolute()
    for role in ROLES:
        endpoint = getattr(settings, role)
        if endpoint.base_url and endpoint.api_key is None and os.environ.get("OPENAI_API_KEY"):
            update[role] = endpoint.model_copy(update={"api_key": endpoint.resolved_key()})
    return replace(
        job,
        settings=settings.model_copy(update=update),
        videos_dir=job.videos_dir.expanduser().absolute(),
    )


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold Ctrl-C back for a few statements; it is delivered, as KeyboardInterrupt, after them."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach Python in the main thread only
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of a Ray head's ``HOST:PORT`` (``ray://`` allowed); one line if malformed."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            "--ray takes HOST:PORT (the head's address, port 6379 unless `ray start --head "
            f"--port` said otherwise), 'auto', or no value for Ray on this machine; got {address!r}"
        )
    return host.strip("[]"), int(port)


def _check_head(address: str, timeout: float = 5.0) -> None:
    """Refuse in one line, within seconds, an address where no Ray head listens."""
    host, port = split_address(address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(
            f"no Ray head answers at {address} ({exc.strerror or exc}): start one there with "
            "`ray start --head`, or check the address"
        ) from None


def _absolute_subtitles(question: Question) -> Question:
    if question.subtitles is None or question.subtitles.is_absolute():
        return question
    return replace(question, subtitles=question.subtitles.absolute())


_EXIT_DETAIL = re.compile(r"Worker exit detail: ([^\n]+)")


def _reason(exc: BaseException) -> str:
    """One line for a Ray failure: the worker's own error, or why its process ended."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return str(cause) if isinstance(cause, LVR1Error) else describe_failure(cause)
    detail = _EXIT_DETAIL.search(str(exc))
    if detail:
        return _one_line(detail.group(1))
    return f"{type(exc).__name__}: {_one_line(exc)}"


def _death(exc: BaseException) -> str:
    """Why a worker's process ended, as far as the driver can tell."""
    detail = _EXIT_DETAIL.search(str(exc))
    if detail:
        return _one_line(detail.group(1), 160)
    return (
        f"{type(exc).__name__}: its process ended, as out of memory, a crash in native code "
        "or a lost node do; Ray's logs on that node say which"
    )


def _one_line(exc: object, limit: int = 200) -> str:
    """The error in one line, or its type's name when its message is empty."""
    return one_line(exc, limit) or type(exc).__name__
