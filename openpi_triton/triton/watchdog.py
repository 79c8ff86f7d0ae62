"""Brings back a model whose Python stub died.

Triton 2.51's Python backend does not restart a stub that crashed (killed, out of memory, a segfault in a
native library): every later request to that instance fails with "Stub process '<instance>' is not
healthy", for good, while Triton still reports the model ready. The watchdog notices on the same host
(a stub process of that tritonserver that it saw before is gone, or the model reports not ready as newer
Tritons do) and reloads the model:

- explicit mode: Triton's unload API, a wait until the model leaves READY, then the load API (a plain load
  of an unchanged, still READY model keeps the dead instance);
- poll mode (the API is refused): it touches the model's version folders, which Triton's next poll loads
  afresh, with new stubs.

A reload counts as done once the model is ready with live stubs again; until then the model is not judged
healthy by readiness alone, and a reload without result is tried again after ``retry_after_s``.

A restarted tritonserver has a new pid and new stubs: :meth:`StubWatchdog.follow` (the orchestrator) or a
pid file re-read before every check (``--triton-pid-file``, for a supervisor in another process) moves the
watchdog onto it.

Run beside a tritonserver: the orchestrator's ``triton`` role does (``make serve``, the docker entrypoint);
by hand,
``python -m openpi_triton.triton.watchdog --url 127.0.0.1:8101 --triton-pid <pid> --repository model_repository``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pathlib
import sys
import threading
import time
from typing import TYPE_CHECKING

from openpi_triton.triton.follower import DependentFollower

if TYPE_CHECKING:
    import tritonclient.grpc as grpcclient

logger = logging.getLogger("openpi_triton.watchdog")

# Every call the watchdog makes has a deadline, so one stuck call cannot stop it watching.
QUERY_TIMEOUT_S = 10.0
# Unload and load wait for a checkpoint to load and every batch bucket to compile (minutes on a GPU).
LOAD_TIMEOUT_S = 1800.0
CHECK_FAILURES_WORTH_A_WARNING = 10


@dataclasses.dataclass(frozen=True)
class WatchdogOptions:
    grpc_url: str
    # The tritonserver process (stubs name their parent on their command line); None: readiness only.
    triton_pid: int | None = None
    # Needed in poll mode only (the folder tritonserver reads); None: reload through the load API only.
    repository: pathlib.Path | None = None
    interval_s: float = 2.0
    # A reload that has not made the model ready by then is tried again (loading a checkpoint and
    # compiling every batch bucket takes minutes on a GPU).
    retry_after_s: float = 600.0
    # A file holding the current tritonserver pid, re-read before every check (a supervisor that restarts
    # tritonserver rewrites it); a pid written there replaces ``triton_pid``.
    triton_pid_file: pathlib.Path | None = None
    # Triton's --model-control-mode: how the models that follow an action model are reloaded after it
    # changes (see openpi_triton.triton.follower); needs ``repository``.
    model_control_mode: str = "poll"


class StubWatchdog:
    def __init__(self, options: WatchdogOptions) -> None:
        self.options = options
        self.reloads: list[str] = []  # models reloaded so far, in order (for logs and tests)
        self._pending: dict[str, float] = {}  # model -> when its reload was asked for
        self._seen: dict[str, set[str]] = {}  # model -> stub instances seen alive since its last (re)load
        # Models reloaded whose new stubs have not been seen yet: a reload that silently kept the dead
        # instance must not pass for a recovery (no stub alive, Triton still says ready).
        self._reloading: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stub-watchdog", daemon=True)
        self._next_pid: int | None = None  # set by follow(), taken up by the watchdog's thread
        self.follower = (
            DependentFollower(options.repository, options.model_control_mode) if options.repository else None
        )
        self._file_pid: int | None = None  # the pid last read from triton_pid_file

    def follow(self, triton_pid: int) -> None:
        """Watches the stubs of a new tritonserver ``triton_pid`` from the next check on (after a restart).

        Call it as soon as the new server is spawned, before it listens: a check that saw the old server's
        stubs missing on a live server would reload every model for nothing.
        """
        self._next_pid = triton_pid

    def watched_stubs(self, model: str) -> set[str]:
        """The stub instances of ``model`` seen alive so far: a stub that dies before it was ever seen is
        noticed only if Triton reports the model not ready."""
        return set(self._seen.get(model, set()))

    def start(self) -> StubWatchdog:
        self._take_up_new_pid()  # the server followed so far, at once: a restart right after is told as one
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=10)

    def _run(self) -> None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.options.grpc_url)
        failures = 0
        try:
            while not self._stop.wait(self.options.interval_s):
                self._take_up_new_pid()
                try:
                    self.check_once(client)
                    failures = 0
                except Exception as exc:  # Triton down or restarting: its own supervisor deals with that
                    failures += 1
                    log = logger.warning if failures == CHECK_FAILURES_WORTH_A_WARNING else logger.debug
                    log("watchdog check failed (%d in a row): %s", failures, exc)
                    # A fresh channel: one whose calls time out may stay broken.
                    client.close()
                    client = grpcclient.InferenceServerClient(self.options.grpc_url)
        finally:
            client.close()

    def _take_up_new_pid(self) -> None:
        pid, self._next_pid = self._next_pid, None
        if self.options.triton_pid_file is not None:
            from_file = _read_pid(self.options.triton_pid_file)
            if from_file is not None and from_file != self._file_pid:  # rewritten: a new server
                self._file_pid = pid = from_file
        if pid is None or pid == self.options.triton_pid:
            return
        if self.options.triton_pid is not None:
            logger.warning("tritonserver is now pid %d (was %d): watching its stubs", pid, self.options.triton_pid)
        self.options = dataclasses.replace(self.options, triton_pid=pid)
        # The old server's stubs, reloads and retries meant nothing for the new one.
        self._seen.clear()
        self._pending.clear()
        self._reloading.clear()

    def check_once(self, client: grpcclient.InferenceServerClient) -> None:
        """One pass: reloads every loaded model that cannot serve (recorded in :attr:`reloads`), and the models
        that follow an action model whose parameters changed."""
        if not client.is_server_live(client_timeout=QUERY_TIMEOUT_S):
            return
        if self.follower is not None:
            self.follower.check_once(client)
        stubs = live_stub_instances(self.options.triton_pid) if self.options.triton_pid else {}
        for entry in _model_index(client):
            name = entry["name"]
            if entry.get("state") != "READY":
                continue  # loading, unloading or failed to load: not a dead stub
            alive = stubs.get(name, set())
            if name in self._reloading:
                # Recovered once the model is ready with live stubs (readiness alone without a Triton pid).
                if (alive or not self.options.triton_pid) and _ready(client, name):
                    self._reloading.discard(name)
                    self._pending.pop(name, None)
                    self._seen[name] = set(alive)
                    continue
                dead: list[str] = []
            else:
                seen = self._seen.setdefault(name, set())
                seen |= alive
                if seen <= alive and _ready(client, name):
                    continue
                dead = sorted(seen - alive)
            asked = self._pending.get(name)
            if asked is not None and time.monotonic() - asked < self.options.retry_after_s:
                continue
            self._pending[name] = time.monotonic()
            self._reloading.add(name)
            self._reload(client, name, dead)

    def _reload(self, client: grpcclient.InferenceServerClient, name: str, dead: list[str]) -> None:
        from tritonclient.utils import InferenceServerException

        why = f"stub {', '.join(dead)} died" if dead else "it has no live stub or reports not ready"
        logger.warning("model '%s' cannot serve (%s): reloading it", name, why)
        self.reloads.append(name)
        # A plain load of an unchanged model keeps its (dead) instances: unload first. The model serves
        # nothing meanwhile anyway.
        try:
            client.unload_model(name, client_timeout=LOAD_TIMEOUT_S)
            # The unload API returns before Triton acts on it; a load while the model is still READY is a
            # no-op that keeps the dead instance. Once it is UNLOADING (which can last minutes: the dead
            # stub never acknowledges), a load starts new instances.
            self._wait_until_not_ready(client, name)
            client.load_model(name, client_timeout=LOAD_TIMEOUT_S)
            return
        except InferenceServerException as exc:
            if "not allowed" not in (exc.message() or "").lower():
                logger.error("reloading model '%s' failed: %s", name, exc.message())
                return
        # Poll mode refuses the API. A touched config.pbtxt would keep the instances too; a touched version
        # folder makes Triton load that version afresh, with new stubs.
        model_dir = self.options.repository / name if self.options.repository else None
        versions = [v for v in model_dir.iterdir() if v.is_dir() and v.name.isdigit()] if model_dir else []
        if not versions:
            logger.error(
                "cannot reload model '%s': Triton is in poll mode and its folder was not found in the "
                "repository given (--repository %s)",
                name,
                self.options.repository,
            )
            return
        try:
            for version in versions:
                os.utime(version)
        except OSError as exc:
            logger.error("cannot reload model '%s' in poll mode: %s (the repository must be writable)", name, exc)
            return
        logger.warning("touched %s: Triton's next repository poll reloads '%s'", model_dir, name)

    @staticmethod
    def _wait_until_not_ready(client: grpcclient.InferenceServerClient, name: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = {m["name"]: m.get("state") for m in _model_index(client)}
            if states.get(name) != "READY":
                return
            time.sleep(0.1)
        logger.warning("model '%s' still READY %.0f s after its unload: loading it anyway", name, timeout_s)


def _read_pid(path: pathlib.Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):  # not written yet, or being rewritten
        return None


def _model_index(client: grpcclient.InferenceServerClient) -> list[dict]:
    return client.get_model_repository_index(as_json=True, client_timeout=QUERY_TIMEOUT_S).get("models", [])


def _ready(client: grpcclient.InferenceServerClient, name: str) -> bool:
    return bool(client.is_model_ready(name, client_timeout=QUERY_TIMEOUT_S))


def live_stub_instances(triton_pid: int) -> dict[str, set[str]]:
    """Model name -> instance names of the Python stubs that tritonserver ``triton_pid`` runs now.

    A stub's command line is ``triton_python_backend_stub <repo>/<model>/<version>/model.py <shm region>
    <sizes...> <parent pid> <backend dir> <...> <instance name> <...>``.
    """
    found: dict[str, set[str]] = {}
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited meanwhile
        if len(argv) < 9 or not argv[0].endswith(b"triton_python_backend_stub") or argv[5] != str(triton_pid).encode():
            continue
        model, instance = pathlib.Path(argv[1].decode()).parts[-3], argv[8].decode()
        if instance != model:  # a model-level stub (config auto-complete while loading) exits by design
            found.setdefault(model, set()).add(instance)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="127.0.0.1:8101", help="Triton gRPC address")
    parser.add_argument("--triton-pid", type=int, help="the tritonserver process id (detects dead stubs)")
    parser.add_argument(
        "--triton-pid-file", type=pathlib.Path, help="file with the current tritonserver pid (re-read every check)"
    )
    parser.add_argument("--repository", type=pathlib.Path, help="the model repository (needed in poll mode)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between checks")
    parser.add_argument(
        "--model-control-mode",
        choices=("poll", "explicit", "none"),
        default="poll",
        help="Triton's mode: how models that follow an edited action model are reloaded",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[watchdog] %(message)s", stream=sys.stderr)
    options = WatchdogOptions(
        args.url,
        args.triton_pid,
        args.repository,
        args.interval,
        triton_pid_file=args.triton_pid_file,
        model_control_mode=args.model_control_mode,
    )
    watchdog = StubWatchdog(options).start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        watchdog.stop()


if __name__ == "__main__":
    sys.exit(main())
