"""--engine ray on a local Ray instance gives the local engine's results, bad inputs included."""

from __future__ import annotations

import re
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from clipzs import ray_engine
from clipzs.cli import app
from clipzs.config import DEFAULT_BATCH_SIZE, GPU_BATCH_SIZE
from clipzs.errors import EXIT_SKIPPED, EXIT_USAGE, UsageError
from clipzs.ray_engine import TASK_CPUS, ActorPlan, plan_actors
from tests.conftest import ModelFiles, jsonl

ray = pytest.importorskip("ray")

LABELS = ["-l", "cat,rocket,coffee", "-k", "3", "-f", "jsonl"]
"""Three ranked labels, in JSON Lines."""
CLASSIFY = [*LABELS, "-b", "3"]
"""The classification the Ray runs are held to, in batches of three (several a run)."""


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A Ray instance of its own (2 CPUs) for the tests that run Ray, whatever cluster the user's RAY_ADDRESS or a
    ``ray start`` names. Only the tests that request it start it: the plan tests need no Ray."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("RAY_ADDRESS", raising=False)  # also for what Ray starts from this process
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def folder(photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The photos and an unreadable JPEG, shared by the module's runs (read only), so their paths agree."""
    return _folder(photos, tmp_path_factory.mktemp("ray-inputs"))


@pytest.fixture(scope="module")
def local_fp32(rand_clip: ModelFiles, folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Result:
    """The local engine's ``CLASSIFY`` of ``folder`` in fp32: the reference the Ray runs are held to."""
    with pytest.MonkeyPatch.context() as env:  # as tests.conftest._isolated_cache, which is per test
        env.setenv("CLIPZS_CACHE_DIR", str(tmp_path_factory.mktemp("ray-cache")))
        env.setenv("HF_HUB_OFFLINE", "1")
        return CliRunner().invoke(app, ["classify", str(folder), *CLASSIFY, "--no-cache", *rand_clip.args])


def _assert_same_records(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """The same images in the same order, with the same labels or errors and the same ranked scores."""
    assert [r["path"] for r in got] == [r["path"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys() and a.get("label") == b.get("label") and a.get("error") == b.get("error")
        if "top_k" in a:
            assert [e["score"] for e in a["top_k"]] == pytest.approx([e["score"] for e in b["top_k"]], abs=1e-5)


@pytest.mark.usefixtures("local_ray")
def test_ray_engine_equals_the_local_engine(rand_clip: ModelFiles, folder: Path, local_fp32: Result) -> None:
    """Two actors on the two CPUs (the one-actor plan, ``--workers 1`` or none, is run by the precision test)."""
    args = ["classify", str(folder), *CLASSIFY, *rand_clip.args]
    on_ray = CliRunner().invoke(app, [*args, "--engine", "ray", "--workers", "2"])
    assert local_fp32.exit_code == on_ray.exit_code == EXIT_SKIPPED, on_ray.output
    _assert_same_records(jsonl(on_ray.stdout), jsonl(local_fp32.stdout))
    assert "skipped" in on_ray.stderr and "INFO" not in on_ray.stderr


@pytest.mark.usefixtures("local_ray")
def test_the_actors_run_at_the_precision_asked_for_on_their_devices(
    rand_clip: ModelFiles, folder: Path, local_fp32: Result
) -> None:
    """bf16 on Ray (the default plan: one actor on both CPUs) gives the local engine's bf16 results, not its fp32
    ones; fp16 on CPU-only actors is refused before they start."""
    args = ["classify", str(folder), *LABELS, "--no-cache", *rand_clip.args]  # (the default batch: one for all)
    local = jsonl(CliRunner().invoke(app, [*args, "--precision", "bf16"]).stdout)
    on_ray = CliRunner().invoke(app, [*args, "--precision", "bf16", "--engine", "ray"])
    assert on_ray.exit_code == EXIT_SKIPPED, on_ray.output
    got = jsonl(on_ray.stdout)
    _assert_same_records(got, local)
    scores = [r.get("score") for r in got]
    assert scores == pytest.approx([r.get("score") for r in local], abs=1e-5)
    assert scores != pytest.approx([r.get("score") for r in jsonl(local_fp32.stdout)], abs=1e-5)
    refused = CliRunner().invoke(app, [*args, "--precision", "fp16", "--engine", "ray"])
    assert refused.exit_code == EXIT_USAGE and "fp16 is for CUDA GPUs" in refused.stderr


@pytest.mark.usefixtures("local_ray")
def test_a_failed_command_stops_the_ray_it_started(
    rand_clip: ModelFiles, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clipzs import cli

    stopped: list[bool] = []
    monkeypatch.setattr(cli, "_ray_running", lambda: False)  # as if the command had started this Ray
    monkeypatch.setattr(cli, "_stop_ray", lambda: stopped.append(True))
    args = ["classify", str(folder), "-l", "cat,rocket", "--no-cache", *rand_clip.args]
    refused = CliRunner().invoke(app, [*args, "--precision", "fp16", "--engine", "ray"])
    assert refused.exit_code == EXIT_USAGE and stopped == [True]


def _folder(photos: list[Path], tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    return folder


@pytest.mark.parametrize(
    ("nodes", "workers", "expected"),
    [
        ([{"CPU": 2}], None, ActorPlan(1, 1.5, 0.0, 2)),  # one actor using both cores, room for two tasks
        ([{"CPU": 2}], 1, ActorPlan(1, 1.5, 0.0, 2)),  # --workers 1 is that plan (run by the precision test)
        ([{"CPU": 2}], 2, ActorPlan(2, 0.75, 0.0, 1)),  # two actors on 2 cores: a thread each, not two
        ([{"CPU": 16}, {"CPU": 16}], None, ActorPlan(2, 14.0, 0.0, 14)),  # one per node, an eighth for tasks
        ([{"CPU": 8}, {"CPU": 8}], 3, ActorPlan(3, 3.5, 0.0, 4)),  # two on a node: each gets half its room
        ([{"CPU": 8, "GPU": 2}, {"CPU": 8, "GPU": 2}], None, ActorPlan(4, 1.0, 1.0, None)),  # one per GPU
        ([{"CPU": 8, "GPU": 2}], 3, ActorPlan(3, 1.0, 0.5, None)),  # more actors than GPUs: they share
        ([{"CPU": 0}], None, ActorPlan(1, 1.0, 0.0, 1)),  # no workers yet (autoscaling): a slot each
    ],
)
def test_actor_plan(nodes: list[dict[str, float]], workers: int | None, expected: ActorPlan) -> None:
    assert plan_actors(nodes, workers) == expected


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 8, 16, 64])
@pytest.mark.parametrize("workers", [1, 2, 3, 5, 8])
def test_the_actors_always_leave_room_for_a_task(cpus: int, workers: int) -> None:
    """Actors holding every CPU slot while decode tasks wait for one would never finish."""
    if workers > cpus:
        return  # refused (test_cpu_actors_beyond_the_cores_are_refused)
    plan = plan_actors([{"CPU": cpus}], workers)
    assert plan.actors == workers and 0 < plan.num_cpus != TASK_CPUS
    assert workers * plan.num_cpus + TASK_CPUS <= cpus
    assert plan.threads is not None and plan.threads <= max(1, cpus)


@pytest.mark.usefixtures("local_ray")
@pytest.mark.parametrize("workers", [1, 2])
def test_decoding_runs_in_tasks_of_its_own(workers: int, capsys: pytest.CaptureFixture[str]) -> None:
    """Ray Data must not fuse the decode step into the actors (``MapBatches(_decode)->MapBatches(_Scorer)``)."""
    dataset = ray_engine.build_dataset(
        [Path("a.jpg")],
        plan=plan_actors([{"CPU": 2}], workers),
        model={},
        classifier=b"",
        geometry=None,
        draft=None,
        top_k=1,
        batch_size=4,
    )
    capsys.readouterr()
    dataset.explain()  # the plans, without running them
    optimized = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "ActorPoolMapOperator[MapBatches(_Scorer)]" in optimized, optimized
    assert "TaskPoolMapOperator[MapBatches(_decode)]" in optimized


@pytest.mark.usefixtures("local_ray")
@pytest.mark.parametrize(("gpus", "device", "batch"), [(0.0, "cpu", DEFAULT_BATCH_SIZE), (1.0, "cuda", GPU_BATCH_SIZE)])
def test_actors_get_their_devices_default_batch_size(
    gpus: float, device: str, batch: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: dict[str, Any] = {}

    class Nothing:
        def iter_rows(self) -> Iterator[dict[str, Any]]:
            return iter(())

    monkeypatch.setattr(ray_engine, "plan_actors", lambda nodes, workers: ActorPlan(1, 1.0, gpus, None))
    monkeypatch.setattr(ray_engine, "build_dataset", lambda paths, **kwargs: built.update(kwargs) or Nothing())
    (tmp_path / "c.clf").write_bytes(b"")
    found = ray_engine.classify_on_ray(
        [Path("a.jpg")], model={}, classifier_file=tmp_path / "c.clf", geometry=None, draft=None, top_k=1
    )
    assert list(found) == [] and built["batch_size"] == batch and built["model"]["device"] == device


@pytest.mark.usefixtures("local_ray")
def test_ray_writes_the_parquet_parts_itself(
    rand_clip: ModelFiles, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts written by Ray's tasks: the local engine's schema and rows, in input order across parts, whole
    files only; --resume redoes exactly the rows of a lost part."""
    import pyarrow.parquet as pq

    monkeypatch.setattr(ray_engine, "PARQUET_PART_ROWS", 3)
    args = ["classify", str(folder), "-l", "cat,rocket,coffee", "-k", "3", "-b", "2", *rand_clip.args]
    local, on_ray = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    done = CliRunner().invoke(app, [*args, "--no-cache", "-o", str(local)])
    result = CliRunner().invoke(app, [*args, "--engine", "ray", "--workers", "2", "-o", str(on_ray)])
    assert done.exit_code == result.exit_code == EXIT_SKIPPED, result.output
    assert "broken.jpg" in result.stderr and "scored" in result.stderr
    parts = sorted(on_ray.iterdir())
    assert len(parts) >= 3 and all(re.fullmatch(r"part-00000-\d{9}\.parquet", p.name) for p in parts)
    assert all(pq.read_metadata(p).num_rows <= 3 for p in parts)
    expected, got = pq.read_table(local), pq.read_table(on_ray)  # parts in name order
    assert got.schema == expected.schema == pq.read_schema(parts[0])
    assert got.column("path").to_pylist() == expected.column("path").to_pylist()
    for column in ("label", "error"):
        assert got.column(column).to_pylist() == expected.column(column).to_pylist()
    assert got.column("score").to_pylist() == pytest.approx(expected.column("score").to_pylist(), abs=1e-5)

    parts[1].unlink()  # as if the run had stopped before this part was in place
    lost = set(expected.column("path").to_pylist()) - set(pq.read_table(on_ray).column("path").to_pylist())
    resumed = CliRunner().invoke(app, [*args, "--engine", "ray", "-o", str(on_ray), "--resume"])
    assert resumed.exit_code in (0, EXIT_SKIPPED), resumed.output
    assert f"{len(lost)} to go" in resumed.stderr
    new = [p for p in on_ray.iterdir() if p.name.startswith(f"part-{len(parts) - 1:05d}-")]
    assert {path for p in new for path in pq.read_table(p).column("path").to_pylist()} == lost
    assert sorted(pq.read_table(on_ray).column("path").to_pylist()) == sorted(expected.column("path").to_pylist())


@pytest.mark.parametrize(
    ("device", "nodes", "expected"),
    [
        ("auto", [{"CPU": 8, "GPU": 1}], [{"CPU": 8, "GPU": 1}]),  # the cluster's GPUs where it has some
        ("auto", [{"CPU": 8}], [{"CPU": 8}]),
        ("cpu", [{"CPU": 8, "GPU": 1}, {"CPU": 4}], [{"CPU": 8}, {"CPU": 4}]),  # --device cpu leaves them out
        ("cuda", [{"CPU": 8}, {"CPU": 8, "GPU": 2}], [{"CPU": 8}, {"CPU": 8, "GPU": 2}]),
    ],
)
def test_the_actors_run_on_the_device_asked_for(
    device: str, nodes: list[dict[str, float]], expected: list[dict[str, float]]
) -> None:
    assert ray_engine.actor_nodes(nodes, device) == expected
    assert plan_actors(ray_engine.actor_nodes(nodes, device), None).num_gpus == (device != "cpu" and gpus(nodes))


def gpus(nodes: list[dict[str, float]]) -> bool:
    return any(node.get("GPU") for node in nodes)


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cuda", "the Ray cluster has no GPUs"),  # as the driver may have none while the workers do, and back
        ("mps", "use --device auto, cpu or cuda"),
        ("cuda:1", "use --device auto, cpu or cuda"),  # Ray hands each actor its GPUs
    ],
)
def test_a_device_the_actors_cannot_use_is_refused(device: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ray_engine.actor_nodes([{"CPU": 8}], device)


def test_device_cpu_keeps_the_actors_off_a_clusters_gpus(
    rand_clip: ModelFiles, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--device cpu`` (rand_clip.args) on a cluster with GPUs: CPU actors at fp32, in CPU-sized batches, as the
    local engine computes; --device cuda is the cluster's to have, not this machine's (Ray's nodes mocked)."""
    built: dict[str, Any] = {}

    class Nothing:
        def iter_rows(self) -> Iterator[dict[str, Any]]:
            return iter(())

    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # as if joined: no Ray starts, and none is stopped
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}}])
    monkeypatch.setattr(ray_engine, "build_dataset", lambda paths, **kwargs: built.update(kwargs) or Nothing())
    args = ["classify", str(photos[0]), "-l", "cat,dog", "--engine", "ray", *rand_clip.args]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert built["model"]["device"] == "cpu" and built["plan"].num_gpus == 0
    assert built["batch_size"] == DEFAULT_BATCH_SIZE
    on_gpus = CliRunner().invoke(app, [*args, "--device", "cuda"])  # (a later --device wins)
    assert on_gpus.exit_code == 0, on_gpus.output
    assert built["model"]["device"] == "cuda" and built["plan"].num_gpus == 1.0


def test_without_ray_the_message_names_the_extra(
    rand_clip: ModelFiles, photos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray not installed: a usage error saying what to install, before the model loads or the output is made."""
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    output = tmp_path / "out.csv"
    args = ["classify", str(photos[0]), "-l", "cat,dog", "--engine", "ray", "-o", str(output), *rand_clip.args]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_USAGE and "pip install 'ray[data]'" in result.stderr, result.output
    assert not output.exists()


def test_workers_without_ray_is_refused(rand_clip: ModelFiles, photos: list[Path]) -> None:
    """--workers sizes Ray's actor pool: the local engine would ignore it without a word."""
    result = CliRunner().invoke(app, ["classify", str(photos[0]), "-l", "cat,dog", "--workers", "4", *rand_clip.args])
    assert result.exit_code == EXIT_USAGE and "--engine ray" in result.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_ray_address_that_does_not_answer_is_refused_at_once() -> None:
    """Ray would retry such an address for many minutes (a host that does not resolve, or a port nothing
    listens on): the command says so instead."""
    for address in (f"127.0.0.1:{_closed_port()}", "no-such-host.invalid:6379"):
        with pytest.raises(UsageError, match=f"RAY_ADDRESS={re.escape(address)}: no Ray cluster answers there"):
            ray_engine.check_ray_address(address)
    with pytest.raises(UsageError, match="HOST:PORT"):
        ray_engine.check_ray_address("head-node")
    for left_to_ray in (None, "", "auto", "local", "ray://head:10001"):
        ray_engine.check_ray_address(left_to_ray, connect=None)  # (would fail if it connected)


def test_a_cluster_that_cannot_be_joined_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's own errors (RAY_ADDRESS=auto with no cluster here, a ray:// address without Ray Client) become one
    line naming RAY_ADDRESS, not a traceback."""

    def fail(error: Exception) -> Any:
        def init(**kwargs: Any) -> None:
            raise error

        return init

    monkeypatch.setenv("RAY_ADDRESS", "auto")
    monkeypatch.setattr(ray, "init", fail(ConnectionError("Could not find any running Ray instance.")))
    with pytest.raises(UsageError, match=r"RAY_ADDRESS=auto, but no Ray cluster runs on this machine"):
        ray_engine.join_ray()
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setattr(ray, "init", fail(ValueError("Ray Client requires pip package `ray[client]`.")))
    with pytest.raises(UsageError, match=r"cannot join the Ray cluster at RAY_ADDRESS=ray://head:10001: Ray Client"):
        ray_engine.join_ray()


def test_a_run_refused_on_joining_ray_leaves_the_output_as_it_was(
    rand_clip: ModelFiles, photos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What can only be checked once Ray is joined (fp16 on a cluster of CPUs, here) is refused before the
    output is opened: the results of an earlier run there are not emptied (Ray's nodes mocked)."""
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 8.0}}])
    output = tmp_path / "results.csv"
    output.write_text("path,label,score\nearlier.jpg,cat,0.9\n")
    args = ["classify", str(photos[0]), "-l", "cat,dog", "--engine", "ray", "-o", str(output), *rand_clip.args]
    refused = CliRunner().invoke(app, [*args, "--precision", "fp16"])
    assert refused.exit_code == EXIT_USAGE and "fp16 is for CUDA GPUs" in refused.stderr, refused.output
    assert output.read_text() == "path,label,score\nearlier.jpg,cat,0.9\n"


@pytest.mark.parametrize(
    ("nodes", "workers", "fewer"),
    [([{"CPU": 2}], 64, 2), ([{"CPU": 1}], 2, 1), ([{"CPU": 4}, {"CPU": 2}], 5, 4)],
)
def test_cpu_actors_beyond_the_cores_are_refused(nodes: list[dict[str, float]], workers: int, fewer: int) -> None:
    """--workers 64 on a 2-core machine would start 64 processes, each holding the model, to share two cores."""
    with pytest.raises(UsageError, match=rf"--workers {workers} would put .* use --workers {fewer} or fewer"):
        plan_actors(nodes, workers)
    plan_actors([{"CPU": 8, "GPU": 1}], workers)  # GPU actors share the GPUs as asked
