"""The child process of a python grader (run as a script by graders/sandbox.py; imports nothing of Tunewright).

It reads `{"source", "sample", "item"}` as JSON from stdin, fences itself in, runs the source, calls
`grade(sample, item)` and writes `{"score": x}` or `{"error": "<traceback>"}` as JSON to its original stdout.
What the grader prints goes to stderr (fd 1 is pointed there), which the parent keeps a bounded part of.

The fence, set up before the grader's code runs:

- `socket` is patched so that creating, connecting or resolving anything raises `OSError`;
- an audit hook (which Python code cannot remove) refuses, with `PermissionError`: every `socket.*` event; starting
  processes (`subprocess.Popen`, `os.system`, `os.exec*`, `os.posix_spawn*`, `os.spawn*`, `os.fork`, `os.forkpty`)
  and signalling them (`os.kill`, `os.killpg`, `signal.pthread_kill`); loading libraries through `ctypes` (as an
  `ImportError`, so that packages which try `import ctypes` carry on); raising resource limits
  (`resource.setrlimit`, `resource.prlimit`); opening, listing or changing files outside the interpreter's own
  library folders (read-only there) and the working directory (a fresh temporary folder); and walking the
  garbage collector's objects or swapping a function's code (the usual ways around such a hook).

This is a fence against accidents and casual misuse, not a security boundary: native code (an extension module)
is not seen by audit hooks. What the kernel enforces is set by the parent: resource limits, the wall clock and,
where `unshare` works, an empty network namespace.
"""

import json
import linecache
import math
import os
import sys
import traceback
from pathlib import Path

MAX_TRACEBACK = 8000

_PROCESS_EVENTS = frozenset(
    {
        "subprocess.Popen",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
        "resource.setrlimit",
        "resource.prlimit",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "sys.setprofile",
        "sys.settrace",
        "pty.spawn",
        "os.startfile",
        "webbrowser.open",
        "winreg.ConnectRegistry",
    }
)
# event: the positions of its path arguments (checked against the working directory, or the read-only roots)
_PATH_EVENTS = {
    "os.listdir": (0,),
    "os.scandir": (0,),
    "os.chdir": (0,),
    "os.mkdir": (0,),
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.rename": (0, 1),
    "os.link": (0, 1),
    "os.symlink": (0, 1),
    "os.truncate": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.utime": (0,),
    "os.chflags": (0,),
    "os.lchflags": (0,),
    "os.setxattr": (0,),
    "os.removexattr": (0,),
    "os.listxattr": (0,),
    "os.getxattr": (0,),
    "shutil.copyfile": (0, 1),
    "shutil.copymode": (0, 1),
    "shutil.copystat": (0, 1),
    "shutil.rmtree": (0,),
    "shutil.move": (0, 1),
    "shutil.chown": (0,),
    "shutil.make_archive": (0,),
    "shutil.unpack_archive": (0, 1),
}
_READ_EVENTS = frozenset({"os.listdir", "os.scandir", "os.listxattr", "os.getxattr"})
_SOCKET_FUNCTIONS = (
    "create_connection",
    "create_server",
    "socketpair",
    "fromfd",
    "getaddrinfo",
    "gethostbyname",
    "gethostbyname_ex",
    "gethostbyaddr",
)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Fence:
    """The audit hook's rules: which events are refused, and which paths may be read or written."""

    def __init__(self, workdir, script):
        """Allow reading the interpreter's library folders and this script; reading and writing `workdir`."""
        readable = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
        readable.update(os.path.realpath(path) for path in sys.path if path and Path(path).is_dir())
        readable.update((os.path.realpath(script), "/dev/null", "/dev/urandom", "/dev/zero"))
        self.readable = tuple(sorted(readable))
        self.writable = (os.path.realpath(workdir),)
        self._realpath, self._join, self._getcwd, self._fsdecode = (
            os.path.realpath,
            os.path.join,
            os.getcwd,
            os.fsdecode,
        )

    def hook(self, event, args):
        """The audit hook: raise for a refused event, return for the others."""
        if event in _PROCESS_EVENTS:
            raise PermissionError(f"the grader sandbox does not allow {event}")
        if event.startswith("socket."):
            raise PermissionError("network access is disabled in the grader sandbox")
        if event.startswith("ctypes."):
            raise ImportError("ctypes is not available in the grader sandbox")
        if event == "object.__setattr__" and len(args) > 1 and args[1] in ("__code__", "__globals__"):
            raise PermissionError("the grader sandbox does not allow replacing a function's code")
        if event == "open":
            path, mode, flags = (*args, None, None)[:3]
            write = bool(flags & _WRITE_FLAGS) if isinstance(flags, int) else any(c in (mode or "") for c in "wax+")
            self.check(event, path, write=write)
        elif event in _PATH_EVENTS:
            if len(args) > 2 and event != "os.rename" and isinstance(args[-1], int) and args[-1] != -1:
                raise PermissionError(f"the grader sandbox does not allow {event} relative to a directory descriptor")
            for position in _PATH_EVENTS[event]:
                if position < len(args):
                    self.check(event, args[position], write=event not in _READ_EVENTS)

    def check(self, event, path, *, write):
        """Refuse `path` outside the working directory (and, for reading, outside the library folders)."""
        if isinstance(path, int) or path is None:
            return  # an open descriptor: reached through an allowed path
        full = self._realpath(self._join(self._getcwd(), self._fsdecode(path)))
        roots = self.writable if write else self.writable + self.readable
        if not any(full == root or full.startswith(root.rstrip("/") + "/") for root in roots):
            raise PermissionError(f"the grader sandbox does not allow {event} on {self._fsdecode(path)!r}")


def _refused(*args, **kwargs):
    raise OSError("network access is disabled in the grader sandbox")


def install_fence(workdir, script):
    """Patch `socket` so that nothing connects or resolves, then add the audit hook (see the module's docstring).

    The socket classes stay classes (modules such as `ssl` subclass them when imported); making one raises.
    """
    import _socket
    import socket

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            _refused()

    class NoRawSocket(_socket.socket):
        def __init__(self, *args, **kwargs):
            _refused()

    for name in _SOCKET_FUNCTIONS:
        if hasattr(socket, name):
            setattr(socket, name, _refused)
    socket.socket = socket.SocketType = NoSocket
    _socket.socket = _socket.SocketType = NoRawSocket
    sys.addaudithook(Fence(workdir, script).hook)


def _score(value):
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"grade() must return a number, not {type(value).__name__}")
    score = float(value)
    if not math.isfinite(score):
        raise ValueError(f"grade() must return a finite number, not {score}")
    return score


def main():
    """Read the request, fence the process in, grade, write the result."""
    result = os.dup(1)
    os.dup2(2, 1)
    request = json.loads(sys.stdin.buffer.read())
    source = request["source"]
    linecache.cache["<grader>"] = (len(source), None, source.splitlines(keepends=True), "<grader>")
    install_fence(str(Path.cwd()), __file__)
    try:
        namespace = {"__name__": "__grader__", "__builtins__": __builtins__}
        exec(compile(source, "<grader>", "exec"), namespace)  # noqa: S102 - running the grader is this process's job
        grade = namespace.get("grade")
        if not callable(grade):
            raise NameError("the source defines no function grade(sample, item)")
        payload = {"score": _score(grade(request["sample"], request["item"]))}
    except BaseException as exc:  # noqa: BLE001 - everything the grader raises is its error, reported
        report = traceback.TracebackException.from_exception(exc)
        report.stack = traceback.StackSummary.from_list(
            [frame for frame in report.stack if frame.filename != __file__]  # the grader's frames, not the fence's
        )
        text = "".join(report.format())
        payload = {"error": text if len(text) <= MAX_TRACEBACK else "…" + text[-MAX_TRACEBACK:]}
    os.write(result, json.dumps(payload).encode())
    os.close(result)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
