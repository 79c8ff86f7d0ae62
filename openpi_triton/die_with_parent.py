"""Run as a script by :func:`openpi_triton.processes.spawn`: ties this process to the thread that spawned it
(Linux ``PR_SET_PDEATHSIG``), then execs the real command in its place.

It exists so that the spawning process never runs Python between fork and exec: ``subprocess`` then starts
children with vfork, and the at-fork handlers of the libraries loaded there (gRPC's, whose threads run in
the stack process) never run in a half-made child. Only the standard library is imported, and ``-I -S``
keeps start-up short.

Usage: ``python -I -S die_with_parent.py REPORT_FD PARENT_PID SIGNAL COMMAND...``. REPORT_FD is a pipe whose
other end the spawner reads until end of file: it closes on a successful exec (the descriptor is
close-on-exec from then on), or carries ``errno:message`` when this script could not do its part.
"""

import ctypes
import os
import sys

PR_SET_PDEATHSIG = 1


def _fail(report_fd: int, code: int, error: int, message: str) -> None:
    os.write(report_fd, f"{error}:{message}".encode())
    os._exit(code)


def main() -> None:
    report_fd, parent_pid, death_signal = (int(arg) for arg in sys.argv[1:4])
    command = sys.argv[4:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        _fail(report_fd, 126, error, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(error)}")
    # The spawner waits on REPORT_FD until we exec, so its thread is alive here; a parent that is already gone
    # (killed before the prctl took effect) would never send the signal, so die now as it would have.
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), death_signal)
        os._exit(126)
    os.set_inheritable(report_fd, False)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        _fail(report_fd, 127, exc.errno or 0, exc.strerror or str(exc))


if __name__ == "__main__":
    main()
