"""Runs a real ``tritonserver`` locally from the ``nvidia-pytriton`` wheel (no Docker, CPU or GPU).

The wheel carries a tritonserver 2.51 binary, the Python backend and one stub per Python version. To use
them outside pytriton: copy the backend into a private folder with the stub of the running Python, put
the wheel's bundled libraries and libpython on ``LD_LIBRARY_PATH``, and put this venv's ``bin/`` first on
``PATH`` (the stub takes ``sys.path`` from the first ``python3`` it finds).

    python -m openpi_triton.triton.launcher --model-repository model_repository   # = stack --role triton

Local defaults: HTTP 8100, gRPC 8101, metrics 8102 (the robot-facing slots use 8000-8002), model control
mode ``poll`` so that editing a ``config.pbtxt`` reloads that model.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import py_compile
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import IO

from openpi_triton.processes import spawn
from openpi_triton.readiness import http_status, wait_until

DEFAULT_HTTP_PORT = 8100
DEFAULT_GRPC_PORT = 8101
DEFAULT_METRICS_PORT = 8102
# The Python backend's per-instance regions; a killed tritonserver leaves them in /dev/shm (RAM) for good.
SHM_DIRECTORY = pathlib.Path("/dev/shm")
SHM_REGION_PREFIX = "triton_python_backend_shm_region_"


# Lines tritonserver prints at start on a machine without a GPU (or its driver); harmless there.
CPU_ONLY_NOISE = (
    "Failed to initialize NVML",
    "DCGM unable to start",
    "Unable to get CUDA device count",
    "CUDA driver version is insufficient",
    "cudaGetDeviceCount",
    "found no CUDA",
)


class LauncherError(RuntimeError):
    """tritonserver could not be set up or did not become ready."""


@dataclasses.dataclass(frozen=True)
class TritonPaths:
    """Where the wheel keeps the server binary, the Python backend, the stubs and the bundled libraries."""

    server_root: pathlib.Path
    libs: pathlib.Path

    @classmethod
    def from_wheel(cls) -> TritonPaths:
        try:
            import pytriton
        except ImportError:
            raise LauncherError(
                "the nvidia-pytriton wheel is not installed (it carries tritonserver): "
                "pip install nvidia-pytriton==0.7.0"
            ) from None
        package = pathlib.Path(pytriton.__file__).resolve().parent
        paths = cls(server_root=package / "tritonserver", libs=package.parent / "nvidia_pytriton.libs")
        if not paths.binary.exists():
            raise LauncherError(f"tritonserver binary not found at {paths.binary}")
        return paths

    @property
    def binary(self) -> pathlib.Path:
        return self.server_root / "bin" / "tritonserver"

    def stub(self, version: str) -> pathlib.Path:
        return self.server_root / "python_backend_stubs" / version / "triton_python_backend_stub"


def build_backend_dir(paths: TritonPaths, target: pathlib.Path) -> pathlib.Path:
    """``target/python`` = the wheel's Python backend + the stub matching this interpreter."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = paths.stub(version)
    if not stub.exists():
        raise LauncherError(f"the wheel has no Python backend stub for Python {version} ({stub})")
    python_dir = target / "python"
    shutil.copytree(paths.server_root / "backends" / "python", python_dir, dirs_exist_ok=True)
    shutil.copy2(stub, python_dir / "triton_python_backend_stub")
    return target


def server_environment(paths: TritonPaths, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(paths.libs), libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(pathlib.Path(sys.executable).parent), env.get("PATH", "")))
    # JAX must not grab the whole GPU in every stub; each model instance allocates what it uses.
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return env


def precompile_python_models(repository: pathlib.Path) -> list[pathlib.Path]:
    """Writes each Python model's bytecode next to it before Triton starts.

    The stub runs an isolated interpreter (PYTHONDONTWRITEBYTECODE is ignored) that writes
    ``<version>/__pycache__/`` on first import. In poll mode Triton sees the version folder change and
    reloads the model once, for nothing: statistics reset, weights loaded twice, twice the GPU memory during
    the swap. A fresh .pyc already in place is reused and nothing changes. Needs the same Python as the stub
    (true for the launcher's wheel and for the docker image); a read-only repository is left alone.
    """
    compiled = []
    for source in sorted(repository.glob("*/[0-9]*/model.py")):
        if os.access(source.parent, os.W_OK):
            py_compile.compile(str(source), doraise=True)
            compiled.append(source)
    return compiled


@dataclasses.dataclass
class ServerOptions:
    model_repository: pathlib.Path
    http_port: int = DEFAULT_HTTP_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    poll_seconds: int = 2
    # poll: an edited config.pbtxt reloads its model; explicit: only ``load_models`` at start, then the
    # repository API (load / unload) decides; none: everything at start, nothing after.
    model_control_mode: str = "poll"
    load_models: tuple[str, ...] = ("*",)
    log_verbose: int = 0
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    # Where HTTP and gRPC listen: loopback beside the bridge, 0.0.0.0 for a Triton other hosts reach.
    address: str = "127.0.0.1"
    # A tritonserver installed with its own backends (the docker image's); None: the nvidia-pytriton wheel's.
    binary: str | None = None


class TritonServer:
    """A tritonserver child process: started, awaited until ready, logs streamed, stopped with its stubs."""

    def __init__(self, options: ServerOptions, log_prefix: str = "[triton] ", log_stream: IO[str] | None = None):
        self.options = options
        self.log_prefix = log_prefix
        self.log_stream = log_stream or sys.stderr
        self.process: subprocess.Popen[str] | None = None
        self._workdir: pathlib.Path | None = None
        self._log_thread: threading.Thread | None = None
        self.log_lines: list[str] = []

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.options.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.options.http_port}"

    def command(self, backend_dir: pathlib.Path | None, paths: TritonPaths | None) -> list[str]:
        """The command line; without ``paths`` (an installed tritonserver) its own backends are used."""
        o = self.options
        binary = [o.binary] if paths is None else [str(paths.binary), f"--backend-directory={backend_dir}"]
        return [
            *binary,
            f"--model-repository={o.model_repository.resolve()}",
            f"--http-port={o.http_port}",
            f"--grpc-port={o.grpc_port}",
            f"--metrics-port={o.metrics_port}",
            f"--http-address={o.address}",
            f"--grpc-address={o.address}",
            *self._control_args(),
            f"--log-verbose={o.log_verbose}",
            "--strict-readiness=true",
            *o.extra_args,
        ]

    def _control_args(self) -> list[str]:
        o = self.options
        if o.model_control_mode == "poll":
            return ["--model-control-mode=poll", f"--repository-poll-secs={o.poll_seconds}"]
        if o.model_control_mode == "explicit":
            return ["--model-control-mode=explicit", *(f"--load-model={m}" for m in o.load_models)]
        if o.model_control_mode == "none":
            return ["--model-control-mode=none"]
        raise LauncherError(f"model_control_mode must be poll, explicit or none, got {o.model_control_mode!r}")

    def start(self) -> TritonServer:
        """Starts tritonserver in its own process group (so that :meth:`stop` reaches its stubs too).

        The server is SIGKILLed when the calling *thread* ends (PDEATHSIG, see ``openpi_triton.processes``):
        call this from a thread that lives as long as the server should (the main thread, or the thread of
        the supervisor that waits for it).
        """
        precompile_python_models(self.options.model_repository)
        removed = remove_stale_shm_regions()
        self.log_stream.write(
            f"{self.log_prefix}removed {removed} stale Python-backend shared-memory region(s) from {SHM_DIRECTORY}\n"
        )
        if self.options.binary is None:
            paths: TritonPaths | None = TritonPaths.from_wheel()
            assert paths is not None
            self._workdir = pathlib.Path(tempfile.mkdtemp(prefix="openpi-triton-server-"))
            backend_dir: pathlib.Path | None = build_backend_dir(paths, self._workdir / "backends")
            env = server_environment(paths)
        else:
            paths, backend_dir, env = None, None, dict(os.environ)
        env.update(self.options.env)
        self.process = spawn(
            self.command(backend_dir, paths),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._log_thread = threading.Thread(target=self._pump_logs, daemon=True)
        self._log_thread.start()
        return self

    def _pump_logs(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        explained = False
        for line in self.process.stdout:
            self.log_lines.append(line)
            del self.log_lines[:-2000]
            if any(marker in line for marker in CPU_ONLY_NOISE):
                # On a machine without a GPU these look fatal and are not: one line that says so instead.
                if not explained:
                    self.log_stream.write(f"{self.log_prefix}no GPU found (NVML/DCGM/CUDA unavailable): CPU only\n")
                    explained = True
                continue
            self.log_stream.write(self.log_prefix + line)
            self.log_stream.flush()

    def ready(self, models: Sequence[str] = (), every_model: bool = False) -> bool:
        """The server is live and every one of ``models`` is ready (``--strict-readiness``: loaded and warm);
        with ``every_model``, the server is ready (``/v2/health/ready``: each model it loaded is).

        Asks Triton's HTTP health endpoints: a fresh request each time, where a gRPC channel that met a server
        not listening yet backs off for seconds before it tries again (a restart would be noticed late).
        """
        server = "/v2/health/ready" if every_model else "/v2/health/live"
        paths = [server, *(f"/v2/models/{urllib.parse.quote(m)}/ready" for m in models)]
        return all(http_status(self.options.http_port, path) == 200 for path in paths)

    def wait_ready(self, models: Sequence[str] = (), timeout: float = 300.0, every_model: bool = False) -> None:
        """Waits until :meth:`ready`; raises with the log tail if the server dies or time runs out."""

        def exited() -> str | None:
            if self.process is None or self.process.poll() is not None:
                return "tritonserver exited during start-up"
            return None

        try:
            what = f"tritonserver ready (models {list(models) if models or not every_model else 'all'})"
            wait_until(lambda: self.ready(models, every_model), timeout, what, unless=exited, interval_s=0.25)
        except (RuntimeError, TimeoutError) as exc:
            raise LauncherError(f"{exc}:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 40) -> str:
        return "".join(self.log_lines[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the server's process group (server + stubs), SIGKILL after ``timeout``."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        if self.process is not None:
            try:  # stubs left behind by a server that died on its own
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            # Until they are gone they still map their regions, which the next start would have to keep.
            _wait_until_group_gone(self.process.pid, timeout_s=5.0)
        if self._log_thread is not None:
            self._log_thread.join(timeout=5)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_until_group_gone(pgid: int, timeout_s: float) -> None:
    """Until no live (non-zombie) process is left in process group ``pgid``, at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while _live_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _live_group_members(pgid: int) -> list[int]:
    members = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, the rest follows the last ")".
            state, _ppid, pgrp = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            members.append(int(proc.name))
    return members


def remove_stale_shm_regions(directory: pathlib.Path = SHM_DIRECTORY, prefix: str = SHM_REGION_PREFIX) -> int:
    """Deletes the Python backend's shared-memory files that no live process has open or mapped; returns how many.

    Several tritonservers may share this host (and its /dev/shm): a region is only stale when no process holds
    it, as an open file (``/proc/*/fd``) or a mapping (``/proc/*/maps``). The files are listed *before* the
    processes are read, so a region created meanwhile is not a candidate, and a candidate's creator (which holds
    it from its creation on: descriptor first, then mapping) is still there when its /proc entry is read. Age is
    no sign of staleness: a region in use is written all the time, and one of a server killed a second ago is
    already stale. Other users' files are left alone; processes whose /proc entries we may not read (other
    users', unless root) cannot be seen, but cannot hold our files either unless we shared them.
    """
    candidates = []
    for path in directory.glob(prefix + "*"):
        try:
            if path.stat().st_uid == os.geteuid():
                candidates.append(path)
        except FileNotFoundError:
            continue
    if not candidates:
        return 0
    in_use = _files_in_use(prefix)
    removed = 0
    for path in candidates:
        if path.name in in_use:
            continue
        try:
            path.unlink()
            removed += 1
        except OSError:  # removed by someone else meanwhile, or not ours to remove
            continue
    return removed


def _files_in_use(prefix: str) -> set[str]:
    """Names (not paths: a container sees the same file under its own root) of files starting with ``prefix``
    that some process has open or mapped."""
    names: set[str] = set()
    for proc in pathlib.Path("/proc").iterdir():
        if proc.name.isdigit():
            names |= _held_by(proc, prefix)
    return names


def _held_by(proc: pathlib.Path, prefix: str) -> set[str]:
    names = set()
    try:
        fds = list((proc / "fd").iterdir())
    except OSError:  # exited meanwhile, or not ours to read
        fds = []
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if prefix in target:
            names.add(_file_name(target))
    try:
        with open(proc / "maps", errors="replace") as maps:
            names.update(_file_name(line) for line in maps if prefix in line)
    except OSError:
        pass
    return names


def _file_name(path_or_maps_line: str) -> str:
    return path_or_maps_line.rstrip("\n").removesuffix(" (deleted)").rsplit("/", 1)[-1]


def main(argv: list[str] | None = None) -> int:
    """This module's CLI is the orchestrator's ``triton`` role (``python -m openpi_triton.stack --role triton``)."""
    parser = argparse.ArgumentParser(description="Run tritonserver from the nvidia-pytriton wheel.")
    parser.add_argument("--model-repository", type=pathlib.Path, required=True)
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT)
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    parser.add_argument("--poll-seconds", type=int, default=2)
    parser.add_argument("--model-control-mode", choices=("poll", "explicit", "none"), default="poll")
    parser.add_argument("--wait-for", action="append", default=[], help="model that must be ready (repeatable)")
    args = parser.parse_args(argv)
    from openpi_triton import stack  # imported here: the orchestrator builds on this module

    forwarded = ["--role", "triton", "--model-repository", str(args.model_repository)]
    for flag in ("http_port", "grpc_port", "metrics_port", "poll_seconds", "model_control_mode"):
        forwarded += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    for model in args.wait_for or ["*"]:  # none named: every model it loads
        forwarded += ["--wait-for-model", model]
    return stack.main(forwarded)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now (for tests and side-by-side runs)."""
    import socket

    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


if __name__ == "__main__":
    sys.exit(main())
