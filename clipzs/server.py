"""A resident clipzs: ``clipzs serve`` keeps models loaded so that later commands skip the start-up.

Each ``clipzs`` process spends seconds before its first image: importing torch and open_clip and loading the
model (about 5 s for a ViT-B/32 on a small CPU), which is most of a command once image features are cached.
While a server listens on this user's socket, ``classify``, ``build-classifier``, ``eval``, ``probe`` and
``sort`` hand their arguments, working directory, environment and standard input to it and relay what it
prints; output, files and exit status are what the command would give on its own. Without a server, or with
``CLIPZS_NO_SERVER=1``, commands run in their own process as always.

The socket lives in the cache directory (``CLIPZS_CACHE_DIR``), readable by its owner only, and is named after
the clipzs version, so a server never runs commands for another version. One command runs at a time; others
wait their turn. A client that goes away (Ctrl-C, a killed process) interrupts its command, as Ctrl-C does.

This module is imported by every ``clipzs`` command before anything else: the client half stays free of
torch, open_clip and Typer.
"""

from __future__ import annotations

import _thread
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from clipzs import __version__
from clipzs.config import CACHE_ENV

FORWARDED = frozenset({"classify", "build-classifier", "eval", "probe", "sort"})
"""The commands that load a model, and so gain from a resident one."""
NO_SERVER_ENV = "CLIPZS_NO_SERVER"
STOP = "stop"
"""A request that asks the server to exit."""
MAX_SOCKET_PATH = 100  # bytes; AF_UNIX paths are limited to 104 (macOS) or 108 (Linux)
_HEADER = struct.Struct(">cI")  # frame kind, payload length
_STDOUT, _STDERR, _EXIT = b"o", b"e", b"x"


def socket_path() -> Path:
    """Where the server of this cache directory and clipzs version listens."""
    from clipzs.cache import cache_dir

    return cache_dir() / f"server-{__version__}.sock"


# -- the client: every clipzs command ------------------------------------------------------------------------


def forward(argv: Sequence[str]) -> int | None:
    """Run the command on the resident server when one is listening; its exit status, or None to run here."""
    if not argv or argv[0] not in FORWARDED or os.environ.get(NO_SERVER_ENV) or not hasattr(socket, "AF_UNIX"):
        return None
    path = socket_path()
    try:
        if path.stat().st_uid != os.getuid():
            return None  # someone else's socket: never hand them this user's command
    except OSError:
        return None
    try:
        cwd = os.getcwd()
    except OSError:  # the working folder is gone: let the command say so in its own process
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:  # a server that died without removing its socket: run here
        sock.close()
        return None
    with sock:
        stdin = sys.stdin.buffer.read() if "-" in argv[1:] and sys.stdin is not None else b""
        _send(sock, _request(list(argv), stdin, cwd))
        return _relay(sock)


def _request(argv: list[str], stdin: bytes, cwd: str = "/") -> bytes:
    env = dict(os.environ)
    if sys.stdout.isatty() or sys.stderr.isatty():  # shells set these without exporting them
        columns, lines = shutil.get_terminal_size()
        env.setdefault("COLUMNS", str(columns))
        env.setdefault("LINES", str(lines))
    header = {
        "argv": argv,
        "cwd": cwd,
        "env": env,
        "stdout_tty": sys.stdout.isatty(),
        "stderr_tty": sys.stderr.isatty(),
    }
    blob = json.dumps(header).encode("utf-8")
    return struct.pack(">II", len(blob), len(stdin)) + blob + stdin


def _relay(sock: socket.socket) -> int:
    """Copy the server's output frames to stdout and stderr until its exit status arrives.

    The first Ctrl-C tells the server to interrupt the command (it then reports and exits as it would here);
    a second one leaves at once.
    """
    interrupted = False
    while True:
        try:
            frame = _read_frame(sock)
        except KeyboardInterrupt:
            if interrupted:
                return 130
            interrupted = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            continue
        if frame is None:  # the server went away mid-command
            print("clipzs: error: the clipzs server stopped during the command", file=sys.stderr)
            return 1
        kind, payload = frame
        if kind == _EXIT:
            return int(payload.decode())
        stream = sys.stdout if kind == _STDOUT else sys.stderr
        try:
            stream.buffer.write(payload)
            stream.flush()
        except BrokenPipeError:  # the reader went away (| head): the server learns it as the socket closes
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
            return 141


def _send(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)


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


# -- the server -----------------------------------------------------------------------------------------------


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
                self._sock.sendall(_HEADER.pack(self.kind, len(data)) + data)
        return len(data)


def _text_stream(channel: _Channel) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        io.BufferedWriter(channel),
        encoding="utf-8",
        errors="surrogateescape" if channel.kind == _STDOUT else "backslashreplace",
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
    """Interrupts the running command, as Ctrl-C would, when its client hangs up or stops reading."""

    def __init__(self, sock: socket.socket) -> None:
        self._lock = threading.Lock()
        self._running = True
        self.interrupted = False
        threading.Thread(target=self._watch, args=(sock,), daemon=True).start()

    def _watch(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while sock.recv(4096):
                pass
        with self._lock:
            if self._running:
                self.interrupted = True
                _thread.interrupt_main()

    def done(self) -> None:
        with self._lock:
            self._running = False


def serve(idle_timeout: float, models: int) -> None:
    """Listen on ``socket_path()`` and run commands one at a time until stopped or idle for ``idle_timeout``
    seconds. Raises RuntimeError when another server already listens there."""
    from clipzs.model import keep_loaded

    log = sys.stderr  # (commands get the client's own streams)
    path = socket_path()
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise OSError(f"the socket path {path} is too long for this system: set {CACHE_ENV} to a shorter folder")
    listener = _listen(path)
    keep_loaded(models)
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("clipzs serve: %(message)s"))
    logger = logging.getLogger("clipzs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the server's own messages go to its log, not to a client
    # Libraries log through the root logger (open_clip's warnings, say); its handler is made by the first call
    # and would keep the first client's stream. Make it now, writing to whichever client is current.
    logging.basicConfig(handlers=[_CurrentStderr()])
    print(f"clipzs serve: listening on {path} (stops after {idle_timeout:.0f} s idle)", file=log, flush=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        listener.settimeout(idle_timeout)
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                print("clipzs serve: idle, stopping", file=log, flush=True)
                return
            conn.settimeout(None)
            with conn:
                carry_on = _handle(conn, log)
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)  # ends the request's watch, which waits for the client
            if not carry_on:
                print("clipzs serve: stopped", file=log, flush=True)
                return
    finally:
        signal.signal(signal.SIGTERM, previous)
        keep_loaded(0)
        logger.removeHandler(handler)
        listener.close()
        with contextlib.suppress(OSError):
            path.unlink()


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
    listener.listen(16)
    return listener


def _handle(conn: socket.socket, log: TextIO) -> bool:
    """Run one request; False when it asks the server to stop."""
    sizes = _read_exact(conn, 8)
    if sizes is None:
        return True
    header_size, stdin_size = struct.unpack(">II", sizes)
    header_blob = _read_exact(conn, header_size)
    stdin = _read_exact(conn, stdin_size) if stdin_size else b""
    if header_blob is None or stdin is None:
        return True
    request = json.loads(header_blob)
    if request.get("argv") == [STOP]:
        with contextlib.suppress(OSError):
            conn.sendall(_HEADER.pack(_EXIT, 1) + b"0")
        return False
    started = time.perf_counter()
    code = _run(conn, request, stdin)
    argv = " ".join(request["argv"])
    print(f"clipzs serve: {argv[:200]} -> exit {code} in {time.perf_counter() - started:.2f} s", file=log, flush=True)
    return True


def _run(conn: socket.socket, request: dict[str, Any], stdin: bytes) -> int:
    """Run the command as the client's process would: its arguments, directory, environment and streams."""
    lock = threading.Lock()
    channels = [
        _Channel(conn, _STDOUT, request["stdout_tty"], lock),
        _Channel(conn, _STDERR, request["stderr_tty"], lock),
    ]
    stdout, stderr = (_text_stream(channel) for channel in channels)
    code = 1
    watch = None
    try:
        with _client_context(request, stdin, stdout, stderr):
            watch = _Watch(conn)
            code = _invoke(request["argv"])
            watch.done()
            for stream in (stdout, stderr):
                with contextlib.suppress(OSError, ValueError):  # a client gone (| head) already has its status
                    stream.flush()
    except KeyboardInterrupt:  # the client hung up just as the command ended
        code = 130
    except Exception as e:  # noqa: BLE001 - e.g. the client's folder is gone, or so is the client
        code = 1
        with contextlib.suppress(OSError, ValueError):
            stderr.write(f"clipzs: error: the clipzs server could not run the command: {e}\n")
    finally:
        if watch is not None:
            watch.done()
        for channel in channels:
            channel.hang_up()
    with contextlib.suppress(OSError):
        conn.sendall(_HEADER.pack(_EXIT, len(str(code))) + str(code).encode())
    return code


def _invoke(argv: list[str]) -> int:
    from clipzs.cli import app

    try:
        app(args=argv, prog_name="clipzs", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        print("clipzs: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - a bug: report it as the client's own process would, and keep serving
        import traceback

        traceback.print_exc(file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def _client_context(request: dict[str, Any], stdin: bytes, stdout: Any, stderr: Any) -> Iterator[None]:
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    try:
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
        sys.stdout, sys.stderr = stdout, stderr
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def stop() -> bool:
    """Ask the server of this cache directory to stop; whether one was listening."""
    if not hasattr(socket, "AF_UNIX"):
        return False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(socket_path()))
    except OSError:
        sock.close()
        return False
    with sock:
        _send(sock, _request([STOP], b""))
        _read_frame(sock)
    return True


def wait_until_listening(timeout: float) -> bool:
    """Whether a server answers on the socket within ``timeout`` seconds (for ``serve --detach``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(socket_path()))
            return True
        except OSError:
            time.sleep(0.05)
        finally:
            probe.close()
    return False
