"""A resident clipzs: ``clipzs serve`` keeps models loaded so that later commands skip the start-up.

Each ``clipzs`` process spends seconds before its first image: importing torch and open_clip and loading the
model (about 5 s for a ViT-B/32 on a small CPU), which is most of a command once image features are cached.
While a server listens on this user's socket, ``classify``, ``build-classifier``, ``eval``, ``probe`` and
``sort`` hand their arguments, working directory, environment, umask and standard input to it and relay what
it prints; output, files and exit status are what the command would give on its own.

A command runs in its own process instead (as it does without a server, or with ``CLIPZS_NO_SERVER=1``) when
the server could not give the same result: it is busy with another command, it runs another Python
environment or clipzs, the environment differs in what a process reads once at start-up (thread counts,
visible GPUs, cache locations), or the command names a file of this process (``/dev/stdin``, ``<(...)``) or
runs on Ray. So serving is never worse than not serving, only faster.

The socket lives in the cache directory (``CLIPZS_CACHE_DIR``), is its owner's alone, and is named after the
clipzs version. A client that goes away (Ctrl-C, a killed process) interrupts its command as Ctrl-C does.

Every ``clipzs`` command imports this module first: the client half stays free of torch, open_clip and Typer.
"""

from __future__ import annotations

import _thread
import contextlib
import io
import itertools
import json
import logging
import math
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from clipzs import __version__
from clipzs.config import CACHE_ENV
from clipzs.errors import EXIT_BROKEN_PIPE, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE

FORWARDED = frozenset({"classify", "build-classifier", "eval", "probe", "sort"})
"""The commands that load a model, and so gain from a resident one."""
NO_SERVER_ENV = "CLIPZS_NO_SERVER"
PINNED_PREFIXES = ("OMP_", "MKL_", "CUDA_", "PYTORCH_", "TORCH_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_")
PINNED_NAMES = ("TMPDIR", "XDG_CACHE_HOME", "PYTHONWARNINGS", "PYTHONPATH")
"""Environment read once per process (by torch, the hub client, tempfile...): a client whose values differ
from the server's runs its command itself."""
OWN_FILES = ("/dev/std", "/dev/fd/", "/dev/tty", "/proc/self/", "/proc/thread-self/")
"""Paths that name something else in every process (``/dev/null`` does not, and is served)."""
READY_TIMEOUT_S = 1.0
"""How long a client waits for the server to take its command before running it itself (the server is busy)."""
REQUEST_TIMEOUT_S = 30.0
"""How long the server waits for a request once it has said it is ready."""
STOP = "stop"
"""A request that asks the server to exit."""
POLL_S = 1.0
"""How often an idle server looks whether its time is up and whether its socket is still its own (the cache
folder may have been deleted, or another server listens there now): a server nobody can reach stops."""
MAX_SOCKET_PATH = 100  # bytes; AF_UNIX paths are limited to 104 (macOS) or 108 (Linux)
_HEADER = struct.Struct(">cI")  # frame kind, payload length
_READY, _STDOUT, _STDERR, _EXIT = b"r", b"o", b"e", b"x"


def socket_path() -> Path:
    """Where the server of this cache directory and clipzs version listens."""
    from clipzs.cache import cache_dir

    return cache_dir() / f"server-{__version__}.sock"


def identity() -> dict[str, Any]:
    """What must be the same in server and client for a command to run alike in both."""
    pinned = {k: v for k, v in os.environ.items() if k.startswith(PINNED_PREFIXES) or k in PINNED_NAMES}
    return {"prefix": sys.prefix, "package": str(Path(__file__).parent), "code": _code_stamp(), "env": pinned}


def _code_stamp() -> list[list[object]]:
    """The version of the code a command would run, as ``stat`` says it: a server started before clipzs was
    updated in place (a git pull in an editable install, say), or before a package it runs was installed, upgraded
    or removed (open_clip, torch, Pillow...), runs the old code, so commands run in their own process. clipzs's
    own files by size and mtime; the package folders by mtime, which changes as pip adds or removes entries there.
    Not ctime as ``cache.file_version``: a chmod or a restored mtime changes the ctime of code that is the same,
    and would retire the server for good."""
    stamp: list[list[object]] = []
    with contextlib.suppress(OSError):
        for entry in sorted(os.scandir(Path(__file__).parent), key=lambda e: e.name):
            if entry.name.endswith(".py"):
                status = entry.stat()
                stamp.append([entry.name, status.st_size, status.st_mtime_ns])
    for folder in sys.path:
        if os.path.basename(folder) in ("site-packages", "dist-packages"):
            with contextlib.suppress(OSError):
                stamp.append([folder, os.stat(folder).st_mtime_ns])
    return stamp


# -- the client: every clipzs command ------------------------------------------------------------------------


def forward(argv: Sequence[str]) -> int | None:
    """Run the command on the resident server when one can run it as this process would; its exit status,
    or None to run it here."""
    if not _servable(argv):
        return None
    try:
        cwd = os.getcwd()
    except OSError:  # the working folder is gone: let the command say so in its own process
        return None
    if not _mine(socket_path()):
        return None
    try:
        # Stdin first, however long its writer takes (a find over a large tree), not while a server waits for it.
        stdin = sys.stdin.buffer.read() if "-" in argv[1:] else None
        code = _forward(argv, stdin or b"", cwd)
    except KeyboardInterrupt:  # before the server had the command, or while relaying to a blocked stdout
        print("clipzs: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if code is None and stdin is not None:  # run here after all: the command reads the same stdin
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding=sys.stdin.encoding, errors="surrogateescape")
    return code


def _forward(argv: Sequence[str], stdin: bytes, cwd: str) -> int | None:
    with _connect(READY_TIMEOUT_S) as connected:
        if connected is None:
            return None
        sock, server = connected
        if server.get("identity") != identity():
            return None  # another environment, or one it cannot switch to
        try:
            sock.sendall(_request(list(argv), stdin, cwd))
        except OSError:  # it went away (or stopped waiting) before it had the command
            return None
        return _relay(sock)


def _servable(argv: Sequence[str]) -> bool:
    if not argv or argv[0] not in FORWARDED or os.environ.get(NO_SERVER_ENV) or not hasattr(socket, "AF_UNIX"):
        return False
    if any(name in arg for arg in argv for name in OWN_FILES):
        return False  # this process's own files (/dev/stdout, <(...)): the server's would be others
    if "--engine=ray" in argv or ("--engine", "ray") in itertools.pairwise(argv):
        return False  # Ray keeps its own processes; a server would keep a Ray instance for good
    return not ("-" in argv[1:] and (sys.stdin is None or sys.stdin.isatty()))  # typed paths: read them here


def _mine(path: Path) -> bool:
    """Whether ``path`` is there and this user's: never hand this user's command to someone else's socket."""
    try:
        return path.stat().st_uid == os.getuid()
    except OSError:
        return False


@contextlib.contextmanager
def _connect(timeout: float) -> Iterator[tuple[socket.socket, dict[str, Any]] | None]:
    """A connection the server has taken, with what it says of itself; None when there is no server of this
    user, or it does not take the connection within ``timeout`` seconds."""
    path = socket_path()
    if not _mine(path):
        yield None
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        try:
            sock.settimeout(timeout)  # (a connection waits in the queue of a busy server)
            sock.connect(str(path))
            frame = _read_frame(sock)
            sock.settimeout(None)
        except OSError:  # no server (a stale socket), or a busy one
            yield None
            return
        if frame is None or frame[0] != _READY:
            yield None
            return
        yield sock, json.loads(frame[1])


def _request(argv: list[str], stdin: bytes, cwd: str) -> bytes:
    env = dict(os.environ)
    for fd in (0, 1, 2):  # the width rich would find: shells set COLUMNS without exporting it
        try:
            size = os.get_terminal_size(fd)
        except OSError:
            continue
        if size.columns > 0:  # (a pty may report 0, which rich's own process would not take)
            env.setdefault("COLUMNS", str(size.columns))
        if size.lines > 0:
            env.setdefault("LINES", str(size.lines))
        break
    umask = os.umask(0o022)
    os.umask(umask)
    header = {
        "argv": argv,
        "prog": _program_name(),
        "cwd": cwd,
        "env": env,
        "umask": umask,
        "streams": [_describe(sys.stdout), _describe(sys.stderr)],
    }
    blob = json.dumps(header).encode("utf-8")
    return struct.pack(">II", len(blob), len(stdin)) + blob + stdin


def _program_name() -> str:
    """The name usage messages give the program, as Click finds it in its own process: ``python -m clipzs`` or
    the script's name."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name in ("clipzs", "clipzs.__main__"):
        return "python -m clipzs"
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "clipzs"


def _describe(stream: TextIO | None) -> dict[str, Any]:
    if stream is None:
        return {"tty": False, "encoding": "utf-8", "errors": "strict"}
    return {"tty": stream.isatty(), "encoding": stream.encoding, "errors": stream.errors or "strict"}


def _relay(sock: socket.socket) -> int:
    """Copy the server's output frames to stdout and stderr until its exit status arrives.

    The first Ctrl-C tells the server to interrupt the command (it then reports and exits as it would here);
    a second one leaves at once.
    """
    interrupted = False
    while True:
        try:
            frame = _read_frame(sock)
            if frame is None:  # the server went away mid-command
                print("clipzs: error: the clipzs server stopped during the command", file=sys.stderr)
                return EXIT_FAILURE
            kind, payload = frame
            if kind == _EXIT:
                return int(payload.decode())
            stream = sys.stdout if kind == _STDOUT else sys.stderr
            if stream is None:  # closed (2>&-): what goes there is lost, as in the command's own process
                continue
            try:
                stream.buffer.write(payload)
                stream.flush()
            except BrokenPipeError:  # the reader went away (| head): the server learns it as the socket closes
                from clipzs.output import silence

                silence(stream)
                return EXIT_BROKEN_PIPE
            except OSError as e:  # a full disk, say: as the command's own process says it, and it stops
                with contextlib.suppress(OSError, AttributeError):
                    print(f"clipzs: error: {e.strerror or e}", file=sys.stderr, flush=True)
                return EXIT_USAGE
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)


def _read_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_frame(sock: socket.socket) -> tuple[bytes, bytes] | None:
    header = _read_exact(sock, _HEADER.size)
    if header is None:
        return None
    kind, size = _HEADER.unpack(header)
    payload = _read_exact(sock, size) if size else b""
    return None if payload is None else (kind, payload)


def _frame(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


# -- the server -----------------------------------------------------------------------------------------------


class _Terminated(BaseException):
    """SIGTERM: stop serving, telling a running command's client why."""


class _Channel(io.RawIOBase):
    """One of the client's output streams: writes become frames on its socket."""

    def __init__(self, sock: socket.socket, kind: bytes, tty: bool, lock: threading.Lock) -> None:
        self._sock: socket.socket | None = sock
        self.kind, self._tty, self._lock = kind, tty, lock

    def hang_up(self) -> None:
        """Drop whatever is written from now on (the request is over; a late flush must not fail)."""
        self._sock = None

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._tty

    def write(self, data: Any) -> int:
        data = bytes(data)
        with self._lock:  # the progress bar writes from its own thread
            if self._sock is not None:
                self._sock.sendall(_frame(self.kind, data))
        return len(data)


def _text_stream(channel: _Channel, described: dict[str, Any]) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        io.BufferedWriter(channel),
        encoding=described["encoding"],
        errors=described["errors"],
        line_buffering=channel.isatty(),
        write_through=channel.kind == _STDERR,
    )


class _CurrentStderr(logging.StreamHandler):
    """A logging handler that writes to ``sys.stderr`` as it is at each record: the current client's."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _Watch:
    """Interrupts the running command, as Ctrl-C would, when its client hangs up."""

    pending = False
    """An interrupt was asked for and may not have arrived yet: Python delivers it at its next check, which
    can fall after the command has ended. The server then drops it instead of stopping."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._running = True
        self.interrupted = False
        """Set before the interrupt is raised, so whoever catches it can tell it from the server's own Ctrl-C."""

    def start(self) -> None:
        threading.Thread(target=self._watch, args=(self._sock,), daemon=True).start()

    def _watch(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while sock.recv(4096):
                pass
        with self._lock:
            if self._running:
                self.interrupted = _Watch.pending = True
                _thread.interrupt_main()

    def done(self) -> None:
        with self._lock:
            self._running = False


def serve(idle_timeout: float, models: int, preload: Callable[[], object] | None = None) -> None:
    """Listen on ``socket_path()`` and run commands one at a time until stopped (``stop``, SIGTERM, Ctrl-C) or
    idle for ``idle_timeout`` seconds (``math.inf``: never), or its socket is deleted or replaced; ``preload``
    loads a model before the first command. Raises RuntimeError when another server already listens there."""
    import importlib

    from clipzs.errors import UsageError
    from clipzs.model import keep_loaded

    if not idle_timeout > 0:  # (nor NaN)
        raise UsageError(f"the idle timeout must be a positive number of seconds, not {idle_timeout}")

    for module in ("clipzs.api", "open_clip"):  # imported once, before taking any command
        importlib.import_module(module)
    log = sys.stderr  # (commands get the client's own streams)
    path = socket_path()
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise OSError(f"the socket path {path} is too long for this system: set {CACHE_ENV} to a shorter folder")
    listener = _listen(path)
    bound = _inode(path)
    keep_loaded(models)
    me = json.dumps({"pid": os.getpid(), "identity": identity()}).encode("utf-8")
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("clipzs serve: %(message)s"))
    logger = logging.getLogger("clipzs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the server's own messages go to its log, not to a client
    # Libraries log through the root logger (open_clip's warnings, say); its handler is made by the first call
    # and would keep the first client's stream. Make it now, writing to whichever client is current.
    logging.basicConfig(handlers=[_CurrentStderr()])

    def terminate(*_: Any) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        if preload is not None:
            preload()
        idle = "never stops when idle" if idle_timeout == math.inf else f"stops after {idle_timeout:.0f} s idle"
        print(f"clipzs serve: {os.getpid()} ready on {path} ({idle})", file=log, flush=True)
        listener.settimeout(min(POLL_S, idle_timeout))  # (a timeout of days overflows the system's clock)
        idle_until = time.monotonic() + idle_timeout
        while True:
            try:
                taken = _take(listener, me, log)
            except KeyboardInterrupt:
                if not _Watch.pending:
                    raise  # Ctrl-C on the server itself
                _Watch.pending = False  # a client's interrupt, delivered after its command had ended
                taken = True
            if taken is False:
                break
            if taken:
                idle_until = time.monotonic() + idle_timeout
            elif not _still_mine(path, bound):  # no client can reach this server any more
                print(f"clipzs serve: {path} is gone or another server's, stopping", file=log, flush=True)
                break
            elif time.monotonic() >= idle_until:
                print("clipzs serve: idle, stopping", file=log, flush=True)
                break
    except _Terminated:
        print("clipzs serve: terminated", file=log, flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        keep_loaded(0)
        logger.removeHandler(handler)
        if _still_mine(path, bound):  # never another server's
            with contextlib.suppress(OSError):
                path.unlink()
        listener.close()


def _inode(path: Path) -> tuple[int, int] | None:
    """The device and inode ``path`` leads to; None when it leads nowhere."""
    try:
        found = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return found.st_dev, found.st_ino


def _still_mine(path: Path, bound: tuple[int, int] | None) -> bool:
    """Whether ``path`` still leads to the socket this server bound (clients can reach it). When the system
    will not say (a folder made unreadable), assume it does."""
    try:
        return _inode(path) == bound
    except OSError:
        return True


def _take(listener: socket.socket, me: bytes, log: TextIO) -> bool | None:
    """Take the next connection and run its request; False when the server is to stop, None when no
    connection came within the listener's timeout."""
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        return None
    conn.settimeout(None)
    with conn:
        try:
            carry_on = _handle(conn, me, log)
        except Exception as e:  # noqa: BLE001 - a malformed request must not end the server
            print(f"clipzs serve: bad request: {e!r}", file=log, flush=True)
            carry_on = True
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)  # ends the request's watch, which waits for the client
    if not carry_on:
        print("clipzs serve: stopped", file=log, flush=True)
    return carry_on


def _listen(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # left by a server that did not stop cleanly
        else:
            probe.close()
            raise RuntimeError(f"a clipzs server is already listening on {path}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o077)  # the socket is its owner's alone: commands run with the server's rights
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_mask)
    listener.listen(64)
    return listener


def _handle(conn: socket.socket, me: bytes, log: TextIO) -> bool:
    """Take one connection: say who this server is, then run its request; False when it asks to stop."""
    try:
        conn.sendall(_frame(_READY, me))
        conn.settimeout(REQUEST_TIMEOUT_S)  # a client that connects and says nothing must not hold the server
        sizes = _read_exact(conn, 8)
        if sizes is None:  # the client declined (another environment) or gave up
            return True
        header_size, stdin_size = struct.unpack(">II", sizes)
        header_blob = _read_exact(conn, header_size)
        stdin = _read_exact(conn, stdin_size) if stdin_size else b""
        conn.settimeout(None)
    except OSError:  # a client that gave up waiting and ran its command itself, or that stalled
        return True
    if header_blob is None or stdin is None:
        return True
    request = _checked(json.loads(header_blob))
    if request["argv"] == [STOP]:
        with contextlib.suppress(OSError):
            conn.sendall(_frame(_EXIT, b"0"))
        return False
    started = time.perf_counter()
    try:
        code, interrupted = _run(conn, request, stdin)
    except KeyboardInterrupt:
        if not _Watch.pending:
            raise
        code, interrupted = EXIT_INTERRUPTED, True  # the client's hang-up, delivered as its command ended
    if interrupted and code == EXIT_INTERRUPTED:
        _Watch.pending = False  # the command got it
    argv = " ".join(request["argv"])
    print(f"clipzs serve: {argv[:200]} -> exit {code} in {time.perf_counter() - started:.2f} s", file=log, flush=True)
    with contextlib.suppress(OSError):  # (after the log line: a client that has its status finds the line there)
        conn.sendall(_frame(_EXIT, str(code).encode()))
    if code == EXIT_INTERRUPTED and not interrupted:  # Ctrl-C on the server itself, not a client hanging up
        raise KeyboardInterrupt
    return True


def _checked(request: Any) -> dict[str, Any]:
    """The request, when it has every field with the right type; ValueError otherwise."""
    fields = {"argv": list, "cwd": str, "env": dict, "umask": int, "streams": list}
    if not isinstance(request, dict) or any(not isinstance(request.get(k), t) for k, t in fields.items()):
        raise ValueError("a request lacks a field, or has one of the wrong type")
    if len(request["streams"]) != 2 or not all(isinstance(s, dict) for s in request["streams"]):
        raise ValueError("a request must describe two output streams")
    return request


def _run(conn: socket.socket, request: dict[str, Any], stdin: bytes) -> tuple[int, bool]:
    """Run the command as the client's process would: its arguments, directory, environment and streams.
    The exit status (not yet sent), and whether the client interrupted it."""
    lock = threading.Lock()
    out, err = request["streams"]
    channels = [_Channel(conn, kind, bool(s.get("tty")), lock) for kind, s in ((_STDOUT, out), (_STDERR, err))]
    stdout, stderr = _text_stream(channels[0], out), _text_stream(channels[1], err)
    code = EXIT_FAILURE
    watch = _Watch(conn)
    try:
        with _client_context(request, stdin, stdout, stderr):
            watch.start()
            code = _invoke(request["argv"], str(request.get("prog") or "clipzs"))
            watch.done()
            for stream in (stdout, stderr):
                with contextlib.suppress(OSError, ValueError):  # a client gone (| head) already has its status
                    stream.flush()
    except KeyboardInterrupt:  # the client hung up just as the command ended
        code = EXIT_INTERRUPTED
    except _Terminated:
        with contextlib.suppress(OSError, ValueError):
            stderr.write("clipzs: error: the clipzs server was stopped during the command\n")
            stderr.flush()
            conn.sendall(_frame(_EXIT, str(EXIT_TERMINATED).encode()))
        raise
    except Exception as e:  # noqa: BLE001 - e.g. the client's folder is gone, or so is the client
        code = EXIT_FAILURE
        with contextlib.suppress(OSError, ValueError):
            stderr.write(f"clipzs: error: the clipzs server could not run the command: {e}\n")
            stderr.flush()  # (before the channels hang up below)
    finally:
        watch.done()
        for channel in channels:
            channel.hang_up()
    return code, watch.interrupted


def _invoke(argv: list[str], prog: str = "clipzs") -> int:
    from clipzs.cli import app

    try:
        app(args=argv, prog_name=prog, standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        print("clipzs: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # noqa: BLE001 - a bug: report it as the client's own process would, and keep serving
        import traceback

        traceback.print_exc(file=sys.stderr)
        return EXIT_FAILURE
    return 0


@contextlib.contextmanager
def _client_context(request: dict[str, Any], stdin: bytes, stdout: Any, stderr: Any) -> Iterator[None]:
    from clipzs import cache

    saved_env = dict(os.environ)
    saved_cwd = os.open(".", os.O_RDONLY)  # (by descriptor: the server's folder may have been deleted meanwhile)
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    saved_umask = os.umask(request["umask"])
    try:
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.setdefault("COLUMNS", "80")  # what rich falls back to when no stream is a terminal
        os.environ.setdefault("LINES", "25")
        os.chdir(request["cwd"])
        cache.remember_umask(request["umask"])
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8", errors="surrogateescape")
        sys.stdout, sys.stderr = stdout, stderr
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.fchdir(saved_cwd)
        os.close(saved_cwd)
        os.umask(saved_umask)
        cache.remember_umask(saved_umask)
        os.environ.clear()
        os.environ.update(saved_env)


def stop(timeout: float = 5.0) -> str | None:
    """Stop the server of this cache directory: asked when it is free within ``timeout`` seconds, else with
    SIGTERM (which interrupts its command). How it was stopped, or None when no server was listening."""
    if not hasattr(socket, "AF_UNIX") or not socket_path().exists():
        return None
    pid = _server_pid()
    with _connect(timeout) as connected:
        if connected is not None:
            sock, _ = connected
            sock.sendall(_request([STOP], b"", "/"))
            _read_frame(sock)
            return "stopped"
    if pid is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        return "stopped (it was running a command, which was interrupted)"
    return None


def _server_pid() -> int | None:
    """The pid of the process listening on the socket, where the system tells (Linux), when it is this user's."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(socket_path()))
            pid, uid, _ = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
        except OSError:
            return None
    return pid if uid == os.getuid() else None


def ready(timeout: float) -> bool:
    """Whether a server takes a connection within ``timeout`` seconds (it is listening and not busy)."""
    with _connect(timeout) as connected:
        return connected is not None


def wait_until_listening(timeout: float) -> bool:
    """Whether a server answers on the socket within ``timeout`` seconds (0: look once)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(socket_path()))
                return True
            except OSError:
                pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
