"""Evaluation episodes in spawned processes, each acting with a CPU copy of the policy on its own
JAX runtime: the placement the execution plan picks for policies that act fast on a CPU."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dodgerl.config import EnvConfig
from dodgerl.episodes import EvalResult, Evaluator, write_gif_or_warn

EVAL_WORKER_NICENESS = 15
"""How much lower the evaluation processes' scheduling priority is than the training process's."""


class EvalProcesses:
    """Evaluation episodes in ``workers`` spawned processes, each with its own CPU JAX runtime:
    acting and env stepping neither share the training process's GIL nor queue behind the
    accelerator's updates. Episodes are split into contiguous blocks (worker 0 has episode 0, the
    one recorded); each worker runs its block with an in-process ``Evaluator`` (same seeds, so
    the same episodes as evaluating here), on a copy of the policy sent with each request.

    ``submit`` sends a policy (an object with ``act(obs, key, deterministic=...)`` whose arrays
    the worker puts on its CPU, e.g. ``SACAgent.policy()``) and returns at once; ``collect``
    waits for the workers and returns the episodes in order. The recorded frames stay in worker
    0 (``collect`` returns none): ``write_video(path)`` has it write the last evaluation's GIF
    there, in a thread beside its next evaluation (so the training process does not spend the
    encoding); a GIF that cannot be written is reported on stderr, not raised.

    Deterministic evaluations act exactly as ``Evaluator.run`` with the same policy on the CPU;
    when training runs on an accelerator (other kernels, bf16), actions and so episodes can
    differ in the last bits from evaluating there. Stochastic evaluations draw their noise per
    worker (``fold_in(key, worker)``), so their actions differ from an in-process evaluation's.
    """

    def __init__(self, env_config: EnvConfig, episodes: int, seed: int, record: bool, workers: int) -> None:
        if not 1 <= workers <= episodes:
            raise ValueError(f"EvalProcesses: workers must be in [1, episodes={episodes}], got {workers}")
        ctx = multiprocessing.get_context("spawn")  # forking a process whose JAX runtime started can deadlock
        bounds = np.linspace(0, episodes, workers + 1).round().astype(int)
        self.connections = []
        self.processes = []
        for w in range(workers):
            parent, child = ctx.Pipe()
            block = int(bounds[w + 1] - bounds[w])
            process = ctx.Process(
                target=_eval_worker, name=f"dodgerl-eval-{w}", daemon=True,
                args=(child, env_config, block, seed + int(bounds[w]), record and w == 0),
            )
            process.start()
            child.close()
            self.connections.append(parent)
            self.processes.append(process)
        self.in_flight = False
        self.last_seconds = 0.0
        """How long the slowest worker took to run its episodes in the last evaluation collected."""
        self.last_finished = 0.0
        """``time.perf_counter()`` of this process at which the last evaluation's slowest worker
        finished (from the workers' wall clocks)."""

    def submit(self, policy: Any, key: jax.Array, deterministic: bool) -> None:
        if self.in_flight:
            raise RuntimeError("EvalProcesses.submit: collect the evaluation in flight first")
        policy = jax.device_get(policy)
        key = np.asarray(jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key)
        # Pickled once for all workers (the policy's arrays are megabytes), not once per pipe.
        policy = pickle.dumps(policy, protocol=pickle.HIGHEST_PROTOCOL)
        for w in range(len(self.connections)):
            self._send(w, ("evaluate", (policy, key, w, bool(deterministic))))
        self.in_flight = True

    def finished(self) -> bool:
        """Whether every worker has answered the evaluation in flight (``collect`` would not wait)."""
        return self.in_flight and all(conn.poll() for conn in self.connections)

    def collect(self) -> EvalResult:
        if not self.in_flight:
            raise RuntimeError("EvalProcesses.collect: no evaluation in flight")
        self.in_flight = False
        parts, seconds, finished = zip(*[self._receive(w) for w in range(len(self.connections))])
        self.last_seconds = max(seconds)
        self.last_finished = time.perf_counter() - max(0.0, time.time() - max(finished))
        return EvalResult(np.concatenate([p.returns for p in parts]),
                          np.concatenate([p.lengths for p in parts]), parts[0].frames)

    def write_video(self, path: Path) -> None:
        """Have worker 0 write the GIF of the last evaluation's episode 0 to ``path`` (needs
        ``record``; returns at once)."""
        self._send(0, ("video", Path(path)))

    def _send(self, w: int, message: tuple[str, Any]) -> None:
        try:
            self.connections[w].send(message)
        except (BrokenPipeError, OSError):
            self._dead(w)

    def _receive(self, w: int) -> tuple[EvalResult, float, float]:
        try:
            kind, payload = self.connections[w].recv()
        except (EOFError, OSError):
            self._dead(w)
        if kind == "error":
            raise RuntimeError(f"evaluation worker {w} failed:\n{payload}")
        return payload

    def _dead(self, w: int) -> None:
        """Raise for a worker whose pipe broke, with its traceback if it sent one before dying."""
        self.processes[w].join(timeout=1)
        error = self._pending_error(w)
        if error is not None:
            raise RuntimeError(f"evaluation worker {w} failed:\n{error}")
        raise RuntimeError(f"evaluation worker {w} died (exit code {self.processes[w].exitcode})")

    def _pending_error(self, w: int) -> str | None:
        """The traceback of an error worker ``w`` left unread in its pipe, if any."""
        try:
            while self.connections[w].poll():
                kind, payload = self.connections[w].recv()
                if kind == "error":
                    return payload
        except (EOFError, OSError):
            pass
        return None

    def close(self, wait: bool = True) -> None:
        """Stop the workers once they have done what they were sent (a GIF being written);
        ``wait=False``: stop them now (the training loop stopping on an exception)."""
        for conn in self.connections:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for w, process in enumerate(self.processes):
            process.join(timeout=60 if wait else 0)
            error = self._pending_error(w)
            if error is not None:
                print(f"evaluation worker {w} failed:\n{error}", file=sys.stderr, flush=True)
            if process.is_alive():
                process.terminate()
                process.join()
        for conn in self.connections:
            conn.close()


def _eval_worker(conn: Any, env_config: EnvConfig, episodes: int, seed: int, record: bool) -> None:
    """An ``EvalProcesses`` worker: CPU JAX only, signals left to the training process (which
    closes the workers; on a closed pipe they exit). Any error is sent back with its traceback
    (and printed here)."""
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    jax.config.update("jax_platforms", "cpu")  # before any JAX backend starts in this process
    try:
        # Background work: the env workers and the training loop get the cores first
        # (docs/perf_notes.md, v8). Where the system refuses (a sandbox), the worker runs at the
        # normal priority.
        os.nice(EVAL_WORKER_NICENESS)
    except (AttributeError, OSError):
        pass
    evaluator = writer = None
    try:
        evaluator = Evaluator(env_config, episodes, seed, record)
        frames: list[np.ndarray] = []
        # GIFs are encoded in a thread: this loop must keep reading requests, or
        # the training process would block sending the next policy into a full pipe.
        writer = ThreadPoolExecutor(1, thread_name_prefix="gif")
        while True:
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                break  # the training process has gone
            if kind == "close":
                break
            if kind == "video":
                if frames:
                    writer.submit(write_gif_or_warn, frames, payload)
                continue
            policy, key, worker, deterministic = payload
            policy = jax.device_put(pickle.loads(policy))
            key = jax.random.fold_in(jax.numpy.asarray(key), worker)
            t0 = time.perf_counter()
            result = evaluator.run(lambda o, k: policy.act(o, k, deterministic=deterministic), key)
            frames, result.frames = result.frames, []  # kept here until a GIF is asked for
            try:
                conn.send(("result", (result, time.perf_counter() - t0, time.time())))
            except (BrokenPipeError, OSError):
                break
    except Exception:
        message = traceback.format_exc()
        print(f"evaluation worker failed:\n{message}", file=sys.stderr, flush=True)
        try:
            conn.send(("error", message))
        except (BrokenPipeError, OSError):
            pass
    finally:
        if writer is not None:
            writer.shutdown(wait=True)  # a GIF asked for is finished before the worker exits
        if evaluator is not None:
            evaluator.close()
        conn.close()
