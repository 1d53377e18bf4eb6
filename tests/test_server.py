"""clipzs serve: commands handed to a resident server give what their own process gives, and it stays up."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from clipzs import server
from clipzs.errors import EXIT_SKIPPED
from tests.conftest import ModelFiles, jsonl

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="the server listens on a Unix socket")


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    log: Path

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()


def clipzs(
    *args: str, stdin: bytes = b"", cwd: Path | None = None, local: bool = False
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, **({"CLIPZS_NO_SERVER": "1"} if local else {})}
    return subprocess.run(
        [sys.executable, "-m", "clipzs", *args], input=stdin, capture_output=True, cwd=cwd, env=env, timeout=120
    )


def start_server(
    tmp_path: Path, idle: str = "5", log_name: str = "server.log", *options: str, cwd: Path | None = None
) -> Server:
    log = tmp_path / log_name
    with open(log, "wb") as f:
        process = subprocess.Popen(
            [sys.executable, "-m", "clipzs", "serve", "--idle", idle, *options], stdout=f, stderr=f, cwd=cwd
        )
    if not server.wait_until_listening(60):
        process.kill()
        pytest.fail(f"the server did not start: {log.read_text()}")
    return Server(process, log)


@pytest.fixture
def resident(tmp_path: Path) -> Iterator[Server]:
    running = start_server(tmp_path)
    yield running
    server.stop()
    try:
        running.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        running.process.kill()
        raise


@pytest.fixture
def folder(photos: list[Path], tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for photo in photos[:4]:
        shutil.copy(photo, folder / photo.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    return folder


def served(resident: Server) -> list[str]:
    return [line for line in resident.log_lines() if " -> exit " in line]


def test_a_served_command_gives_what_its_own_process_gives(
    resident: Server, tiny_clip: ModelFiles, folder: Path
) -> None:
    args = ["classify", str(folder), "-l", "circle,square,triangle", "-f", "jsonl", *tiny_clip.args]
    own = clipzs(*args, local=True)
    first, second = clipzs(*args), clipzs(*args)
    assert own.returncode == first.returncode == second.returncode == EXIT_SKIPPED
    assert first.stdout == second.stdout == own.stdout
    assert first.stderr == second.stderr == own.stderr
    assert b"skipped" in first.stderr
    assert len(served(resident)) == 2
    assert sum("loaded tiny-clip" in line for line in resident.log_lines()) == 1  # kept loaded


def test_paths_on_stdin_and_relative_output_are_the_clients(
    resident: Server, tiny_clip: ModelFiles, folder: Path, tmp_path: Path
) -> None:
    names = b"\n".join(p.name.encode() for p in sorted(folder.iterdir()))
    args = ["classify", "-", "-l", "circle,square", "-o", "out.jsonl", *tiny_clip.args]
    result = clipzs(*args, stdin=names, cwd=folder)
    assert result.returncode == EXIT_SKIPPED, result.stderr
    (folder / "served.jsonl").write_bytes((folder / "out.jsonl").read_bytes())
    clipzs(*args, stdin=names, cwd=folder, local=True)
    assert (folder / "served.jsonl").read_text() == (folder / "out.jsonl").read_text()
    assert [r["path"] for r in jsonl((folder / "out.jsonl").read_text())] == [n.decode() for n in names.split()]
    assert len(served(resident)) == 1


def test_usage_errors_come_back_with_their_status(resident: Server, tiny_clip: ModelFiles, tmp_path: Path) -> None:
    result = clipzs("classify", str(tmp_path / "nowhere"), "-l", "a,b", *tiny_clip.args)
    assert result.returncode == 2
    assert b"no images found" in result.stderr and b"Traceback" not in result.stderr
    assert len(served(resident)) == 1


def test_a_changed_checkpoint_is_loaded_again(
    resident: Server, tiny_clip: ModelFiles, folder: Path, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "weights.safetensors"
    shutil.copy(tiny_clip.checkpoint, checkpoint)
    args = ["classify", str(folder / "broken.jpg"), "-l", "a,b", "--model-config", str(tiny_clip.config)]
    clipzs(*args, "-p", str(checkpoint))
    clipzs(*args, "-p", str(checkpoint))
    os.utime(checkpoint, ns=(time.time_ns(), time.time_ns() + 10**9))
    clipzs(*args, "-p", str(checkpoint))
    assert sum("loaded tiny-clip" in line for line in resident.log_lines()) == 2


def test_int8_leaves_the_resident_model_as_it_was(resident: Server, tiny_clip: ModelFiles, folder: Path) -> None:
    args = ["classify", str(folder), "-l", "circle,square,triangle", "-f", "jsonl", *tiny_clip.args]
    int8 = clipzs(*args, "--precision", "int8")
    fp32 = clipzs(*args)
    own = clipzs(*args, local=True)
    assert fp32.stdout == own.stdout
    assert int8.stdout != own.stdout  # the int8 request did run in int8
    assert len(served(resident)) == 2


def test_a_precision_copy_is_kept_loaded_too(resident: Server, tiny_clip: ModelFiles, folder: Path) -> None:
    args = ["classify", str(folder), "-l", "circle,square,triangle", "-f", "jsonl", *tiny_clip.args]
    own = clipzs(*args, "--precision", "bf16", local=True)
    first, second = clipzs(*args, "--precision", "bf16"), clipzs(*args, "--precision", "bf16")
    assert first.stdout == second.stdout == own.stdout
    assert sum(", bf16) in" in line for line in resident.log_lines()) == 1  # cast once, then kept


def test_a_server_older_than_the_code_is_not_used(resident: Server, tiny_clip: ModelFiles, folder: Path) -> None:
    """clipzs updated in place (a git pull in an editable install) while a server runs: it would run old code."""
    from clipzs import prediction

    args = ["classify", str(folder), "-l", "circle,square", "-q", *tiny_clip.args]
    assert clipzs(*args).returncode == EXIT_SKIPPED
    served = len(resident.log_lines())
    source = Path(prediction.__file__)
    before = source.stat()
    try:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        assert clipzs(*args).returncode == EXIT_SKIPPED
        assert len(resident.log_lines()) == served  # it ran in its own process
    finally:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert clipzs(*args).returncode == EXIT_SKIPPED
    assert len(resident.log_lines()) > served


def raw_client() -> socket.socket:
    """A connection the server has taken (its ready frame read), that has sent nothing yet."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(server.socket_path()))
    kind, size = struct.unpack(">cI", sock.recv(5, socket.MSG_WAITALL))
    assert kind == b"r" and json.loads(sock.recv(size, socket.MSG_WAITALL))["identity"] == server.identity()
    return sock


def test_a_client_that_hangs_up_does_not_stop_the_server(resident: Server, tiny_clip: ModelFiles, folder: Path) -> None:
    args = ["classify", str(folder), "-l", "circle,square", "--no-cache", "-q", *tiny_clip.args]
    header = {"argv": args, "cwd": str(folder), "env": dict(os.environ), "umask": 0o022}
    header["streams"] = [{"tty": False, "encoding": "utf-8", "errors": "strict"}] * 2
    blob = json.dumps(header).encode()
    with raw_client() as sock:
        sock.sendall(struct.pack(">II", len(blob), 0) + blob)
    with raw_client() as sock:
        sock.sendall(b"\0\0\0\2\0\0\0\0{}")  # a malformed request
    result = clipzs("classify", str(folder), "-l", "circle,square", "-f", "jsonl", *tiny_clip.args)
    assert result.returncode == EXIT_SKIPPED, result.stderr
    assert len(jsonl(result.stdout.decode())) == 5
    assert resident.process.poll() is None
    assert len(served(resident)) == 2
    assert any("bad request" in line for line in resident.log_lines())


def test_commands_run_here_when_the_server_could_not_run_them_alike(
    resident: Server, tiny_clip: ModelFiles, folder: Path, tmp_path: Path
) -> None:
    """Busy with another client, other start-up environment, this process's own files, earlier configs:
    each runs in its own process (or gives what that would), and nothing waits."""
    args = ["classify", str(folder), "-l", "circle,square", "-f", "jsonl", *tiny_clip.args]
    own = clipzs(*args, local=True)
    with raw_client():  # holds the server
        busy = clipzs(*args)
    assert (busy.returncode, busy.stdout) == (own.returncode, own.stdout)
    threads = subprocess.run(
        [sys.executable, "-m", "clipzs", *args], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True
    )
    assert threads.returncode == own.returncode
    (tmp_path / "labels.txt").write_text("circle\nsquare\n")
    labels = ["classify", str(folder), "--labels-file", "/dev/stdin", "-f", "jsonl", *tiny_clip.args]
    assert clipzs(*labels, stdin=b"circle\nsquare\n").stdout == own.stdout
    assert served(resident) == []
    assert clipzs(*args, "-o", os.devnull).returncode == own.returncode  # the same file in every process
    assert len(served(resident)) == 1
    clipzs(*args)  # registers tiny-clip's config in the server, for this command only
    unregistered = ["classify", str(folder), "-l", "a,b", "-m", "tiny-clip", "-p", str(tiny_clip.checkpoint)]
    assert clipzs(*unregistered).stderr == clipzs(*unregistered, local=True).stderr
    assert len(served(resident)) == 3


def test_files_get_the_clients_umask(resident: Server, tiny_clip: ModelFiles, folder: Path) -> None:
    args = ["classify", str(folder), "-l", "circle,square", "-o", "private.csv", *tiny_clip.args]
    subprocess.run([sys.executable, "-m", "clipzs", *args], cwd=folder, preexec_fn=lambda: os.umask(0o077))
    assert len(served(resident)) == 1
    assert (folder / "private.csv").stat().st_mode & 0o777 == 0o600


def test_stop_ends_a_busy_server(resident: Server) -> None:
    with raw_client():
        stopped = clipzs("serve", "--stop")
    assert b"interrupted" in stopped.stderr
    assert resident.process.wait(timeout=30) == 0
    assert not server.socket_path().exists()


def test_a_dead_server_leaves_commands_running_here(tiny_clip: ModelFiles, folder: Path, tmp_path: Path) -> None:
    running = start_server(tmp_path)
    running.process.send_signal(signal.SIGKILL)
    running.process.wait()
    assert server.socket_path().exists()  # left behind
    result = clipzs("classify", str(folder), "-l", "circle,square", "-f", "jsonl", *tiny_clip.args)
    assert result.returncode == EXIT_SKIPPED and len(jsonl(result.stdout.decode())) == 5
    again = start_server(tmp_path)  # replaces the stale socket
    assert server.stop() == "stopped"
    again.process.wait(timeout=30)
    assert not server.socket_path().exists()


def test_one_server_per_cache_and_stop(resident: Server) -> None:
    second = clipzs("serve")
    assert second.returncode == 2 and b"already listening" in second.stderr
    stopped = clipzs("serve", "--stop")
    assert stopped.returncode == 0 and b"server stopped" in stopped.stderr
    resident.process.wait(timeout=30)
    assert clipzs("serve", "--stop").stderr.startswith(b"clipzs: server was not running")
    assert clipzs("serve", "--detach").returncode == 0
    again = clipzs("serve", "--detach")
    assert again.returncode == 2 and b"already listening" in again.stderr
    assert server.stop() == "stopped"


def test_a_preloaded_model_serves_the_first_command(tiny_clip: ModelFiles, folder: Path) -> None:
    relative = os.path.relpath(tiny_clip.checkpoint, folder)  # written unlike the command's, resolved alike
    options = ["--model-config", str(tiny_clip.config), "-p", relative, "--device", "cpu"]
    started = clipzs("serve", "--detach", *options, cwd=folder)
    try:
        assert started.returncode == 0, started.stderr
        log = server.socket_path().parent / "server.log"
        assert "loaded tiny-clip" in log.read_text()  # before it said it was ready
        result = clipzs("classify", str(folder), "-l", "circle,square", "-f", "jsonl", *tiny_clip.args)
        assert result.returncode == EXIT_SKIPPED, result.stderr
        text = log.read_text()
        assert text.count("loaded tiny-clip") == 1 and " -> exit 3 " in text
    finally:
        assert server.stop() == "stopped"


def test_a_server_that_cannot_start_says_why(folder: Path) -> None:
    """Not only in its log: the model it was to load is unknown (or its weights are not cached, say)."""
    started = clipzs("serve", "--detach", "-m", "ViT-B-99", cwd=folder)
    assert started.returncode == 2
    assert started.stderr.startswith(b"clipzs: error: the server did not start: unknown model 'ViT-B-99'")


def exits_within(process: subprocess.Popen[bytes], seconds: float) -> int | None:
    """The exit status of ``process`` once it exits, or None when it still runs after ``seconds``."""
    deadline = time.monotonic() + seconds
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return process.poll()


def test_a_server_whose_socket_is_deleted_stops(tiny_clip: ModelFiles, folder: Path, tmp_path: Path) -> None:
    """Deleting the cache folder (as the README says to clear the cache) takes the socket with it: the server,
    which nobody can reach now, stops and frees its models; a new one starts and serves (never idle-stopped)."""
    running = start_server(tmp_path, log_name="first.log")
    shutil.rmtree(server.socket_path().parent)
    assert exits_within(running.process, server.POLL_S + 5) == 0
    assert any("is gone or another server's, stopping" in line for line in running.log_lines())
    again = start_server(tmp_path, idle="inf", log_name="second.log")  # (a timeout beyond the clock's range)
    try:
        result = clipzs("classify", str(folder), "-l", "circle,square", "-f", "jsonl", *tiny_clip.args)
        assert result.returncode == EXIT_SKIPPED, result.stderr
        assert len(served(again)) == 1 and again.process.poll() is None
    finally:
        assert server.stop() == "stopped"
        again.process.wait(timeout=30)
    assert not server.socket_path().exists()


def test_a_server_whose_socket_is_replaced_stops_and_leaves_the_new_one(tmp_path: Path) -> None:
    running = start_server(tmp_path, idle="1e12")
    path = server.socket_path()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:  # another server's socket, put in its place
        other.bind(str(path.with_suffix(".new")))
        other.listen(1)
        os.replace(path.with_suffix(".new"), path)
        assert exits_within(running.process, server.POLL_S + 5) == 0
        assert server.wait_until_listening(0)  # its socket is still there, not taken away as the server stopped


def request_bytes(argv: list[str], cwd: Path) -> bytes:
    header = {"argv": argv, "cwd": str(cwd), "env": dict(os.environ), "umask": 0o022}
    header["streams"] = [{"tty": False, "encoding": "utf-8", "errors": "strict"}] * 2
    blob = json.dumps(header).encode()
    return struct.pack(">II", len(blob), 0) + blob


def frames(sock: socket.socket) -> list[bytes]:
    """The kinds of the frames waiting on ``sock``, read without blocking."""
    sock.setblocking(False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := sock.recv(1 << 16):
            data += chunk
    kinds = []
    while data:
        kind, size = struct.unpack(">cI", data[:5])
        kinds.append(kind)
        data = data[5 + size :]
    return kinds


def test_a_command_is_in_the_log_before_its_client_has_its_status(tmp_path: Path) -> None:
    """A client (a script, a test) that reads the log once it has its status finds its command there."""
    conn, client = socket.socketpair()
    seen: list[bytes] = []  # the frames the client had as the command's line was logged

    class Log(io.StringIO):
        def write(self, text: str) -> int:
            if " -> exit " in text:
                seen.extend(frames(client))
            return super().write(text)

    log = Log()
    client.sendall(request_bytes(["--version"], tmp_path))
    with conn, client:
        assert server._handle(conn, b"{}", log) is True
        assert " -> exit 0 " in log.getvalue()
        assert b"o" in seen and b"x" not in seen  # its output had gone, not yet its status
        assert frames(client) == [b"x"]


def handle_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client_gone: bool) -> io.StringIO:
    """Run a request whose command is interrupted as it ends: by its client hanging up, or by Ctrl-C."""

    def interrupted(*_: object) -> tuple[int, bool]:
        server._Watch.pending = client_gone
        raise KeyboardInterrupt

    monkeypatch.setattr(server, "_run", interrupted)
    conn, client = socket.socketpair()
    client.sendall(request_bytes(["--version"], tmp_path))
    log = io.StringIO()
    with conn, client:
        assert server._handle(conn, b"{}", log) is True
    return log


def test_a_client_hang_up_that_lands_as_its_command_ends_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interrupt for a client gone comes when Python next looks, which can be after the command returned:
    the server logs the command and carries on. Ctrl-C on the server itself still stops it."""
    log = handle_interrupted(tmp_path, monkeypatch, client_gone=True)
    assert " -> exit 130 " in log.getvalue() and not server._Watch.pending
    with pytest.raises(KeyboardInterrupt):
        handle_interrupted(tmp_path, monkeypatch, client_gone=False)


def test_a_server_started_before_a_package_was_upgraded_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pip install -U open_clip_torch (or torch, Pillow...) while a server runs: it would run the old package."""
    packages = tmp_path / "lib" / "site-packages"
    (packages / "open_clip_torch-3.3.0.dist-info").mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [*sys.path, str(packages)])
    before = server.identity()
    assert server.identity() == before
    time.sleep(0.01)
    (packages / "open_clip_torch-3.3.0.dist-info").rename(packages / "open_clip_torch-3.4.0.dist-info")
    assert server.identity() != before


def models_named(tiny_clip: ModelFiles, tmp_path: Path, *names: str) -> dict[str, list[str]]:
    """The tiny CLIP under other names (its config copied to NAME.json), each a model of its own to the server:
    the options of a command that classifies an image with it."""
    from tests.tinyclip.shapes import draw

    image = tmp_path / "shape.png"
    draw("red circle", np.random.default_rng(0)).save(image)
    commands = {}
    for name in names:
        config = shutil.copy(tiny_clip.config, tmp_path / f"{name}.json")
        options = ["--model-config", str(config), "-p", str(tiny_clip.checkpoint), "--device", "cpu"]
        commands[name] = ["classify", str(image), "-l", "circle,square", *options]
    return commands


def loads(log: str) -> dict[str, int]:
    """How often the server loaded each model, by name."""
    return Counter(line.split()[3] for line in log.splitlines() if line.startswith("clipzs serve: loaded "))


def test_serve_models_1_keeps_only_the_model_last_used(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """A second model evicts the first, which is loaded again when it is used again (--models given to --detach,
    which starts the server)."""
    commands = models_named(tiny_clip, tmp_path, "first", "second")
    assert clipzs("serve", "--detach", "--models", "1").returncode == 0
    try:
        for name in ("first", "second", "first"):
            result = clipzs(*commands[name])
            assert result.returncode == 0, result.stderr
    finally:
        assert server.stop() == "stopped"
    log = (server.socket_path().parent / "server.log").read_text()
    assert log.count(" -> exit 0 ") == 3 and loads(log) == {"first": 2, "second": 1}, log


def test_serve_models_2_keeps_the_two_models_last_used(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """Both stay loaded; a third evicts the one used least recently (not the first loaded), which alone is
    loaded again."""
    commands = models_named(tiny_clip, tmp_path, "first", "second", "third")
    running = start_server(tmp_path, "5", "server.log", "--models", "2")
    try:
        for name in ("first", "second", "first", "third", "first", "second"):
            result = clipzs(*commands[name])
            assert result.returncode == 0, result.stderr
    finally:
        assert server.stop() == "stopped"
        running.process.wait(timeout=30)
    assert len(served(running)) == 6
    assert loads(running.log.read_text()) == {"first": 1, "second": 2, "third": 1}, running.log.read_text()


def test_detach_with_a_relative_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CLIPZS_CACHE_DIR=relcache: the server listens in ./relcache, not in relcache/relcache (it starts in its
    cache folder), and --detach returns."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIPZS_CACHE_DIR", "relcache")
    started = subprocess.run([sys.executable, "-m", "clipzs", "serve", "--detach"], capture_output=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr
        assert server.socket_path().parent == tmp_path / "relcache"
        assert server.wait_until_listening(0)
    finally:
        assert server.stop() == "stopped"
    assert not (tmp_path / "relcache" / "relcache").exists()


def test_a_slow_path_list_does_not_hold_the_server(resident: Server, tiny_clip: ModelFiles, folder: Path) -> None:
    """The client reads its stdin (a find over a large tree) before it takes the server: meanwhile others are
    served, and the server never gives up on it (after 30 s it did, and the client died with a traceback)."""
    args = ["classify", "-", "-l", "circle,square", "-f", "jsonl", *tiny_clip.args]
    slow = subprocess.Popen(
        [sys.executable, "-m", "clipzs", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    time.sleep(3)  # it waits on its stdin now
    other = clipzs("classify", str(folder), "-l", "circle,square", "-q", *tiny_clip.args)
    assert other.returncode == EXIT_SKIPPED and len(served(resident)) == 1  # served, not run aside as if busy
    out, err = slow.communicate(b"\n".join(str(p).encode() for p in sorted(folder.iterdir())), timeout=120)
    assert slow.returncode == EXIT_SKIPPED, err
    assert len(jsonl(out.decode())) == 5 and len(served(resident)) == 2


def test_closed_and_full_output_streams_end_as_in_the_commands_own_process(
    resident: Server, tiny_clip: ModelFiles, folder: Path, tmp_path: Path
) -> None:
    """2>&- (cron, supervisors): the command runs to its end with its status (it stopped at its first message to
    stderr, exit 1); > /dev/full: one line saying so, exit 2 (a traceback)."""
    args = [sys.executable, "-m", "clipzs", "classify", str(folder), "-l", "circle,square", *tiny_clip.args]
    for name, local in (("served.jsonl", False), ("own.jsonl", True)):
        env = {**os.environ, **({"CLIPZS_NO_SERVER": "1"} if local else {})}
        code = subprocess.run([*args, "-o", str(tmp_path / name)], env=env, preexec_fn=lambda: os.close(2)).returncode
        assert code == EXIT_SKIPPED
    assert (tmp_path / "served.jsonl").read_text() == (tmp_path / "own.jsonl").read_text()
    if os.path.exists("/dev/full"):
        with open("/dev/full", "w") as full:
            served_run = subprocess.run(args, stdout=full, stderr=subprocess.PIPE)
            own = subprocess.run(args, stdout=full, stderr=subprocess.PIPE, env={**os.environ, "CLIPZS_NO_SERVER": "1"})
        assert served_run.returncode == own.returncode == 2
        assert b"No space left on device" in served_run.stderr and b"Traceback" not in served_run.stderr
    assert len(served(resident)) >= 1


def test_a_server_whose_folder_is_deleted_still_serves(tiny_clip: ModelFiles, folder: Path, tmp_path: Path) -> None:
    """A foreground `clipzs serve` started in a folder deleted since: every command failed, silently."""
    (tmp_path / "gone").mkdir()
    running = start_server(tmp_path, cwd=tmp_path / "gone")
    try:
        (tmp_path / "gone").rmdir()
        result = clipzs("classify", str(folder), "-l", "circle,square", "-f", "jsonl", *tiny_clip.args)
        assert result.returncode == EXIT_SKIPPED, result.stderr
        assert len(jsonl(result.stdout.decode())) == 5 and len(served(running)) == 1
    finally:
        assert server.stop() == "stopped"
        running.process.wait(timeout=30)


def test_usage_messages_name_the_program_as_its_own_process_does(resident: Server, tiny_clip: ModelFiles) -> None:
    args = ["classify", "x.png", "-l", "a,b", "--bogus", *tiny_clip.args]
    served_run, own = clipzs(*args), clipzs(*args, local=True)
    assert served_run.returncode == own.returncode == 2
    assert served_run.stderr == own.stderr and b"python -m clipzs classify" in own.stderr
    assert len(served(resident)) == 1
