"""The image-feature cache: a seen image is not decoded or encoded again, and the answers do not change."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from clipzs.api import ZeroShotClassifier
from clipzs.cli import app
from clipzs.errors import EXIT_OK
from clipzs.features import FeatureCache, FileKey
from clipzs.model import LoadedModel
from tests.conftest import ModelFiles, jsonl


class CountingImageEncoder:
    """Counts images sent through the image encoder."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.images = 0
        original = LoadedModel.encode_images

        def counted(model: LoadedModel, batch: object) -> object:
            self.images += len(batch)  # type: ignore[arg-type]
            return original(model, batch)  # type: ignore[arg-type]

        monkeypatch.setattr(LoadedModel, "encode_images", counted)


def classify(folder: Path, labels: str, model: ModelFiles, *extra: str) -> list[dict[str, object]]:
    result = CliRunner().invoke(app, ["classify", str(folder), "--labels", labels, "-b", "3", *model.args, *extra])
    assert result.exit_code == EXIT_OK, result.output
    return jsonl(result.stdout)


def test_second_run_reuses_features_with_the_same_answers(
    rand_clip: ModelFiles, photos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "photos"
    shutil.copytree(photos[0].parent, folder)
    encoder = CountingImageEncoder(monkeypatch)
    first = classify(folder, "cat,rocket", rand_clip)
    assert encoder.images == len(photos)
    assert classify(folder, "cat,rocket", rand_clip) == first  # same labels: same answers, no encoding
    assert encoder.images == len(photos)

    relabelled = classify(folder, "coffee,flower,space", rand_clip)  # new labels: still no image encoding
    assert encoder.images == len(photos)
    assert relabelled == classify(folder, "coffee,flower,space", rand_clip, "--no-cache")  # = computed afresh
    assert encoder.images == 2 * len(photos)  # --no-cache encoded everything again


def test_a_changed_file_is_encoded_again(
    rand_clip: ModelFiles, photos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "photos"
    shutil.copytree(photos[0].parent, folder)
    classify(folder, "cat,rocket", rand_clip)
    encoder = CountingImageEncoder(monkeypatch)
    changed = sorted(folder.iterdir())[0]
    shutil.copyfile(photos[-1], changed)  # new content under an old name
    after = {r["path"]: r for r in classify(folder, "cat,rocket", rand_clip)}
    assert encoder.images == 1
    fresh = {r["path"]: r for r in classify(folder, "cat,rocket", rand_clip, "--no-cache")}
    assert after == fresh


def test_other_models_do_not_share_features(
    rand_clip: ModelFiles, rand_sigmoid: ModelFiles, photos: list[Path]
) -> None:
    folder = photos[0].parent
    classify(folder, "cat,rocket", rand_clip)
    assert classify(folder, "cat,rocket", rand_sigmoid) == classify(folder, "cat,rocket", rand_sigmoid, "--no-cache")


def test_rows_are_keyed_by_file_identity_and_encoder(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x" * 10)
    key = FileKey.of(image)
    assert key is not None and FileKey.of(tmp_path / "missing.jpg") is None and FileKey.of(tmp_path) is None
    cache = FeatureCache(tmp_path / "f.sqlite3", "model-a")
    cache.put_many([(key, np.arange(4, dtype=np.float32))])
    assert cache.get_many([key])[key].tolist() == [0, 1, 2, 3]
    assert FeatureCache(tmp_path / "f.sqlite3", "model-b").get_many([key]) == {}
    image.write_bytes(b"y" * 11)
    assert cache.get_many([FileKey.of(image)]) == {}  # type: ignore[list-item]


def test_a_killed_run_leaves_a_usable_cache(
    rand_clip: ModelFiles, photos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL in the middle of a run: the next run reads what was written and completes the rest, unchanged."""
    import sqlite3

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(80):
        shutil.copyfile(photos[i % len(photos)], folder / f"img{i}.jpg")
    env = {**os.environ, "CLIPZS_CACHE_DIR": str(tmp_path / "cache")}  # (the cache of this test's own commands)
    args = ["classify", str(folder), "-l", "cat,rocket", "-b", "4", "-f", "jsonl", *rand_clip.args]
    command = [sys.executable, "-m", "clipzs", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    assert proc.stdout is not None
    for _ in range(20):
        proc.stdout.readline()
    assert proc.poll() is None  # killed mid-run, not after
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with contextlib.closing(sqlite3.connect(tmp_path / "cache" / "features.sqlite3")) as db:
        kept = db.execute("select count(*) from features").fetchone()[0]
    assert 20 <= kept < 80  # the rows of the results written, at least
    encoded: list[int] = []
    encode = LoadedModel.encode_prepared

    def counted(model: LoadedModel, items: list[Any]) -> Any:
        encoded.append(len(items))
        return encode(model, items)

    monkeypatch.setattr(LoadedModel, "encode_prepared", counted)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == EXIT_OK, again.output
    assert sum(encoded) == 80 - kept  # the rest, and only the rest
    uncached = CliRunner().invoke(app, [*args, "--no-cache"])
    assert jsonl(again.stdout) == jsonl(uncached.stdout)


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="the file system must accept non-UTF-8 names")
def test_a_name_that_is_not_utf8_is_classified_without_caching(
    rand_clip: ModelFiles, photos: list[Path], tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    odd = Path(os.fsdecode(bytes(folder) + b"/caf\xe9.jpg"))
    shutil.copy(photos[0], odd)
    assert FileKey.of(odd) is None
    zsc = ZeroShotClassifier.from_pretrained(
        None, str(rand_clip.checkpoint), model_config=rand_clip.config, device="cpu"
    )
    zsc.build(["cat", "rocket"])
    first, second = (list(zsc.classify_paths([odd])) for _ in range(2))  # with the cache on, twice
    assert first == second and first[0].error is None and first[0].path == str(odd)


def test_a_damaged_cache_file_is_replaced_and_the_run_goes_on(
    rand_clip: ModelFiles, photos: list[Path], _isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = classify(photos[0].parent, "cat,rocket", rand_clip, "--no-cache")
    _isolated_cache.mkdir(parents=True, exist_ok=True)
    (_isolated_cache / "features.sqlite3").write_bytes(np.random.default_rng(0).bytes(3000))  # not a database

    result = CliRunner().invoke(
        app, ["classify", str(photos[0].parent), "-l", "cat,rocket", "-b", "3", *rand_clip.args]
    )
    assert result.exit_code == EXIT_OK and jsonl(result.stdout) == expected
    assert "clipzs: warning: the feature cache" in result.stderr and "was damaged" in result.stderr
    encoder = CountingImageEncoder(monkeypatch)  # the new cache holds them now
    assert classify(photos[0].parent, "cat,rocket", rand_clip) == expected and encoder.images == 0


def test_an_unusable_cache_only_costs_time(rand_clip: ModelFiles, photos: list[Path], tmp_path: Path) -> None:
    expected = classify(photos[0].parent, "cat,rocket", rand_clip, "--no-cache")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    runner = CliRunner(env={"CLIPZS_CACHE_DIR": str(blocker)})  # the cache folder cannot be made
    result = runner.invoke(app, ["classify", str(photos[0].parent), "-l", "cat,rocket", "-b", "3", *rand_clip.args])
    assert result.exit_code == EXIT_OK and jsonl(result.stdout) == expected
    assert "clipzs: warning: cannot open the feature cache" in result.stderr


def test_a_cache_that_fails_mid_run_is_left_and_nothing_is_lost(
    rand_clip: ModelFiles, photos: list[Path], _isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    expected = classify(photos[0].parent, "cat,rocket", rand_clip, "--no-cache")
    made = FeatureCache.open(_isolated_cache / "features.sqlite3", "any")  # the file exists; writing it fails
    assert made is not None
    made.close()

    def full(*args: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(FeatureCache, "_transaction", full)
    result = CliRunner().invoke(
        app, ["classify", str(photos[0].parent), "-l", "cat,rocket", "-b", "2", *rand_clip.args]
    )
    assert result.exit_code == EXIT_OK and jsonl(result.stdout) == expected  # every image, in order
    assert result.stderr.count("cannot be written (database or disk is full)") == 1  # said once, then left alone


WORKER = """
import sys, warnings
import numpy as np
from pathlib import Path
from clipzs.features import FeatureCache, FileKey

database, me = Path(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
sys.stdin.read()  # the barrier: every worker is started and imported; go when stdin closes
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    cache = FeatureCache.open(database, "encoder")
    cache.put_many([(FileKey(f"/photo{me}.jpg", 1, 1), np.full(4, me, dtype=np.float32))])
    cache.close()
print(sum("replaced it" in str(w.message) for w in seen))
"""


@pytest.mark.parametrize("damaged", [False, True])
def test_processes_opening_the_cache_at_once_lose_no_rows(tmp_path: Path, damaged: bool) -> None:
    """Several commands starting together: the table is made once, a damaged file replaced once, every row kept."""
    for round in range(3):
        database = tmp_path / f"round{round}" / "features.sqlite3"
        database.parent.mkdir()
        if damaged:
            database.write_bytes(np.random.default_rng(round).bytes(5000))
        command = [sys.executable, "-c", WORKER, str(database)]
        procs = [
            subprocess.Popen([*command, str(i)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for i in range(6)
        ]
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        for proc in procs:
            proc.stdin.close()  # type: ignore[union-attr]
        replaced = [int(proc.stdout.read()) for proc in procs]  # type: ignore[union-attr]
        for proc in procs:
            proc.wait(timeout=60)
        assert all(proc.returncode == 0 for proc in procs)
        assert sum(replaced) == (1 if damaged else 0)
        cache = FeatureCache(database, "encoder")
        keys = [FileKey(f"/photo{i}.jpg", 1, 1) for i in range(6)]
        assert {int(v[0]) for v in cache.get_many(keys).values()} == set(range(6))
        cache.close()


def test_a_cache_another_process_is_setting_up_is_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite does not wait while another connection switches the file to WAL: 'locked' is tried again."""
    import sqlite3

    original = FeatureCache._set_up
    calls: list[int] = []

    def locked_once(self: FeatureCache) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        original(self)

    monkeypatch.setattr(FeatureCache, "_set_up", locked_once)
    cache = FeatureCache.open(tmp_path / "features.sqlite3", "encoder")
    assert cache is not None and len(calls) == 2
    cache.close()


def test_a_cache_file_another_process_is_replacing_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found damaged, then gone for a moment while another process replaces it: not a reason to run uncached."""
    import sqlite3
    import warnings

    database = tmp_path / "features.sqlite3"
    database.write_bytes(b"not a database" * 100)
    original = FeatureCache.__init__
    calls = []

    def racing(self: FeatureCache, path: Path, encoder: str) -> None:
        calls.append(path)
        if len(calls) == 1:
            path.unlink()  # the other process, which took the lock first, deletes it to make it anew
            raise sqlite3.DatabaseError("file is not a database")
        original(self, path, encoder)

    monkeypatch.setattr(FeatureCache, "__init__", racing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache = FeatureCache.open(database, "encoder")
    assert cache is not None
    cache.put_many([(FileKey("/photo.jpg", 1, 1), np.ones(4, dtype=np.float32))])
    assert len(cache.get_many([FileKey("/photo.jpg", 1, 1)])) == 1
    cache.close()


def test_a_cache_another_process_holds_locked_is_waited_for_once_then_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds a write transaction on a cache not yet set up (a sqlite3 shell's BEGIN EXCLUSIVE):
    one wait for the lock in all, then the run goes on without the cache. Each try used to wait the whole
    timeout again, a hundred times over (50 minutes, silent)."""
    import sqlite3
    import warnings

    from clipzs import features

    database = tmp_path / "features.sqlite3"
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(features, "LOCK_WAIT", 0.2)
    original = FeatureCache._set_up
    tries: list[int] = []

    def counted(self: FeatureCache) -> None:
        tries.append(1)
        original(self)

    monkeypatch.setattr(FeatureCache, "_set_up", counted)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert FeatureCache.open(database, "encoder") is None
    finally:
        holder.close()
    assert len(tries) < 5
    assert any("locked" in str(w.message) and "encoded without it" in str(w.message) for w in seen)
    cache = FeatureCache.open(database, "encoder")  # free again: used as before
    assert cache is not None
    cache.close()


def test_a_cache_damaged_inside_is_made_anew_for_the_next_run(
    rand_clip: ModelFiles, photos: list[Path], _isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose header is whole but whose pages are not ('database disk image is malformed' on the first
    read): the run goes on without it, and the next run has a working cache again. It was left as it was, and
    every later run went without a cache, with a warning each time."""
    expected = classify(photos[0].parent, "cat,rocket", rand_clip, "--no-cache")
    classify(photos[0].parent, "cat,rocket", rand_clip)  # fills the cache
    database = _isolated_cache / "features.sqlite3"
    data = database.read_bytes()
    page = 4096
    database.write_bytes(data[:page] + np.random.default_rng(0).bytes(len(data) - page))  # the schema page kept

    result = CliRunner().invoke(
        app, ["classify", str(photos[0].parent), "-l", "cat,rocket", "-b", "3", *rand_clip.args]
    )
    assert result.exit_code == EXIT_OK and jsonl(result.stdout) == expected
    assert "clipzs: warning: the feature cache" in result.stderr and "malformed" in result.stderr
    again = CliRunner().invoke(app, ["classify", str(photos[0].parent), "-l", "cat,rocket", "-b", "3", *rand_clip.args])
    assert again.exit_code == EXIT_OK and jsonl(again.stdout) == expected and "warning" not in again.stderr
    encoder = CountingImageEncoder(monkeypatch)  # the new cache holds them now
    assert classify(photos[0].parent, "cat,rocket", rand_clip) == expected and encoder.images == 0
