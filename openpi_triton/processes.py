"""Starting, supervising and stopping child processes the same way everywhere.

- :func:`spawn`: ``subprocess.Popen`` whose child is killed when its parent goes away (Linux
  ``PR_SET_PDEATHSIG``), so that no child of ours outlives us, even when we are SIGKILLed and cannot clean up.
- :class:`Supervisor`: keeps one child running, restarting it with exponential backoff when it exits.
- :func:`stop_process`: SIGTERM, a grace period, then SIGKILL.

PDEATHSIG fires when the *thread* that forked the child ends, not only when our process does (prctl(2)):
spawn from a thread that lives as long as the child should (the main thread, or the supervisor's thread that
waits for that child), never from a short-lived worker thread.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

_DIE_WITH_PARENT = str(pathlib.Path(__file__).with_name("die_with_parent.py"))


def spawn(command: Sequence[str], death_signal: int = signal.SIGKILL, **popen_kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(command, **popen_kwargs)``; on Linux the child gets ``death_signal`` when the calling
    *thread* ends (its process exiting or being killed included). Call it from a thread that outlives the child.
    SIGTERM suits a child that shuts down cleanly on it (the QUIC client sidecar closes its connection).

    The child first runs ``die_with_parent.py``, which sets the signal and execs ``command``; this call returns
    once that exec happened (or raises the ``OSError`` that stopped it), so the signal is in place while the
    calling thread still runs. No Python runs in the child between fork and exec (no ``preexec_fn``), which
    keeps the at-fork handlers of loaded libraries, such as gRPC's, out of the child.
    Combines with ``start_new_session`` / ``process_group``.
    """
    if sys.platform != "linux":
        return subprocess.Popen(command, **popen_kwargs)
    read_fd, report_fd = os.pipe()
    try:
        popen_kwargs["pass_fds"] = (*popen_kwargs.get("pass_fds", ()), report_fd)
        wrapped = [sys.executable, "-I", "-S", _DIE_WITH_PARENT, str(report_fd), str(os.getpid()), str(death_signal)]
        process = subprocess.Popen([*wrapped, *command], **popen_kwargs)
        os.close(report_fd)
        report_fd = -1
        report = _read_to_end(read_fd)
    finally:
        os.close(read_fd)
        if report_fd >= 0:
            os.close(report_fd)
    if report:
        process.wait()
        error, _, message = report.decode(errors="replace").partition(":")
        raise OSError(int(error), f"{message}: {command[0]!r}")
    return process


def _read_to_end(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def stop_process(process: subprocess.Popen, timeout: float) -> None:  # type: ignore[type-arg]
    """Terminates ``process`` (if still running) and waits; kills it if it outlives ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def describe_exit(code: int | None) -> str:
    """``signal 9`` for a child killed by a signal, ``code 3`` for one that exited by itself."""
    if code is None:
        return "did not start"
    return f"signal {-code}" if code < 0 else f"code {code}"


def pump_lines(stream: Any, prefix: str, out: Any = None) -> threading.Thread:
    """Copies a child's text output to ``out`` (stderr), each line prefixed, on a daemon thread."""
    target = out or sys.stderr

    def pump() -> None:
        for line in stream:
            target.write(prefix + line)
            target.flush()

    thread = threading.Thread(target=pump, name=f"log {prefix.strip()}", daemon=True)
    thread.start()
    return thread


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Delays between restarts: ``initial_s`` doubling up to ``max_s``; a child that ran at least
    ``reset_after_s`` was healthy, so the next restart waits ``initial_s`` again."""

    initial_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float = 120.0

    def next_delay(self, previous: float | None, ran_for_s: float) -> float:
        if previous is None or ran_for_s >= self.reset_after_s:
            return self.initial_s
        return min(previous * 2, self.max_s)


class SupervisorError(RuntimeError):
    """The child could not be started, or exited before it was ready the first time."""


class Child:
    """What a :class:`Supervisor` runs; subclasses override :meth:`spawn` and what else they need."""

    name = "child"

    def spawn(self) -> subprocess.Popen[Any]:
        """Starts the child; called on the supervisor's thread (use :func:`spawn`, the thread outlives it)."""
        raise NotImplementedError

    def wait_ready(self, process: subprocess.Popen[Any]) -> None:
        """Returns once the child serves; raises if it cannot (died, timed out). Default: at once."""

    def stop(self, process: subprocess.Popen[Any]) -> None:
        """Ends the child (from any thread)."""
        stop_process(process, timeout=20)

    def after_exit(self, process: subprocess.Popen[Any]) -> None:
        """Cleans up after the child exited (its own children, files); on the supervisor's thread."""


class Supervisor:
    """Keeps one :class:`Child` running on its own thread until :meth:`stop`.

    The thread spawns the child, waits until it is ready, waits for it to exit, and starts it again after a
    :class:`Backoff` delay, logging one line for each exit and for each recovery. A child that fails before it
    was ready the first time is not restarted (a configuration error, reported by :meth:`wait_first_ready`);
    after that, every exit is restarted, unless ``restart`` is False: then the first exit ends the supervision
    (:attr:`gone` is set, :attr:`failure` says why) for its owner to act on. The same thread spawns and waits,
    so PDEATHSIG (see :func:`spawn`) ties the child to this supervisor's lifetime.
    """

    def __init__(
        self,
        child: Child,
        backoff: Backoff = Backoff(),
        log: Callable[[str], None] | None = None,
        restart: bool = True,
    ) -> None:
        self.child = child
        self.backoff = backoff
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.restart = restart
        self.process: subprocess.Popen[Any] | None = None
        self.restarts = 0
        self.failure: str | None = None
        self._ever_ready = threading.Event()
        self._done = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # a stop never races a spawn: no child starts after stop()
        self._thread = threading.Thread(target=self._run, name=f"supervise {child.name}", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    @property
    def gone(self) -> bool:
        """The supervision ended by itself: a failed first start, or an exit with ``restart`` off."""
        return self._done.is_set() and not self._stop.is_set()

    def wait_first_ready(self, cancel: threading.Event | None = None) -> bool:
        """True once the child was ready; False if ``cancel`` was set first; raises :class:`SupervisorError`
        if the child failed before that."""
        while not self._ever_ready.wait(0.2):
            if self._done.is_set():
                raise SupervisorError(self.failure or f"{self.child.name} stopped before it was ready")
            if cancel is not None and cancel.is_set():
                return False
        return True

    def stop(self, timeout: float = 60.0) -> None:
        with self._lock:
            self._stop.set()
            process = self.process
        if process is not None and process.poll() is None:
            self.child.stop(process)
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        delay: float | None = None
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                code = self._run_once()
                if self._stop.is_set():
                    return
                if not self._ever_ready.is_set():
                    exited = f"{self.child.name} exited ({describe_exit(code)}) before it was ready"
                    self.failure = self.failure or exited
                    return
                if not self.restart:
                    self.failure = f"{self.child.name} exited ({describe_exit(code)})"
                    return
                delay = self.backoff.next_delay(delay, time.monotonic() - started)
                self.restarts += 1
                self.log(
                    f"{self.child.name} exited ({describe_exit(code)}); "
                    f"restarting in {delay:g} s (restart {self.restarts})"
                )
                if self._stop.wait(delay):
                    return
        finally:
            self._done.set()

    def _run_once(self) -> int | None:
        """One life of the child: spawn, readiness, exit. Returns its exit code (None: it did not start)."""
        with self._lock:
            if self._stop.is_set():
                return None
            try:
                process = self.child.spawn()
            except Exception as exc:
                self._report(f"{self.child.name} could not be started: {exc}")
                return None
            self.process = process
        self._await_ready(process)
        code = process.wait()
        self.child.after_exit(process)
        return code

    def _report(self, failure: str) -> None:
        """Logs a failure of a restarted child; the first start's is raised by :meth:`wait_first_ready`."""
        self.failure = failure
        if self._ever_ready.is_set():
            self.log(failure)

    def _await_ready(self, process: subprocess.Popen[Any]) -> None:
        try:
            self.child.wait_ready(process)
        except Exception as exc:
            if not self._stop.is_set():
                self._report(f"{self.child.name} did not become ready: {exc}")
                self.child.stop(process)  # a half-started child would never be restarted otherwise
            return
        self.failure = None
        if self._ever_ready.is_set():
            self.log(f"{self.child.name} ready again (restart {self.restarts}, pid {process.pid})")
        self._ever_ready.set()
