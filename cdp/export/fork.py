"""Two export stages side by side: one in a forked copy of this process, one here.

An ONNX export is two independent traces (encoder, decoder), each single-threaded Python (torch.export,
then torch.onnx's decompositions and translation): with two CPUs they take the time of the longer one.
The child is a ``fork`` of this process (the model, its capture form and the imported modules are shared,
nothing is rebuilt or pickled); it writes its own file and reports a small JSON record through a pipe.
A child that ends without a record (killed, out of memory) is not an error: its stage then runs here.
Linux only (``fork`` elsewhere is unsafe or missing); everywhere else, or with ``jobs`` = 1, the stages
run one after the other.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Callable, Optional, Tuple, TypeVar

from cdp.core.errors import CdpError

A = TypeVar("A")
B = TypeVar("B")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_jobs() -> int:
    """Stages run at once by default: 2 when a second CPU is free (Linux, ≥ 2 usable CPUs and a 1-minute load
    average at most CPUs − 1), else 1.  On a busy machine a second process only competes with this one
    (the demo export measured 22.3-23.8 s with one, 23.0-27.5 s with two, on 2 CPUs at load 2-3)."""
    if not can_fork() or usable_cpus() < 2:
        return 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        return 1
    return 2 if busy <= usable_cpus() - 1 else 1


def can_fork() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def _child(first: Callable[[], dict], write_fd: int) -> None:
    """Run ``first`` and write {"ok": result} or {"error": message} to ``write_fd``; never returns."""
    try:
        try:
            record = {"ok": first()}
        except CdpError as exc:
            record = {"error": str(exc)}
        except BaseException as exc:  # noqa: BLE001  (reported to the parent, which raises it as a CdpError)
            record = {"error": f"{type(exc).__name__}: {exc}"}
        data = json.dumps(record).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view):]
    finally:
        os._exit(0)


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _stop(pid: int, grace: float = 5.0) -> None:
    """Interrupt the child (its atomic writes remove their temporary files), kill it after ``grace``
    seconds, and reap it."""
    try:
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def run_pair(first: Callable[[], dict], second: Callable[[], B], jobs: int = 1,
             log: Callable[[str], None] = lambda s: None) -> Tuple[dict, B]:
    """``(first(), second())``: with ``jobs`` ≥ 2 on Linux, ``first`` runs in a forked child while ``second``
    runs here.  ``first`` must return a JSON-serialisable dict (it crosses a pipe) and do its work through
    files; its CdpError (or any exception, as "Type: message") is raised here as a CdpError."""
    if jobs < 2 or not can_fork():
        return first(), second()
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        _child(first, write_fd)
    os.close(write_fd)
    done = False
    try:
        here = second()
        data = _read_all(read_fd)
        _, status = os.waitpid(pid, 0)
        done = True
    finally:
        os.close(read_fd)
        if not done:  # this side failed or was interrupted: the child's work is not wanted
            _stop(pid)
    record: Optional[dict] = None
    try:
        record = json.loads(data.decode()) if data else None
    except ValueError:
        record = None
    if not isinstance(record, dict) or not ({"ok", "error"} & set(record)):
        why = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit status {os.waitstatus_to_exitcode(status)}"
        log(f"the second process ended without a result ({why}); running its stage here")
        return first(), here
    if "error" in record:
        raise CdpError(str(record["error"]))
    return record["ok"], here
