"""--engine ray on a local Ray instance gives the local engine's results, bad inputs included."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipzs.cli import app
from clipzs.errors import EXIT_SKIPPED
from tests.conftest import ModelFiles, jsonl

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def _local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ray_engine_equals_the_local_engine(
    rand_clip: ModelFiles, photos: list[Path], tmp_path: Path, workers: str
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    args = ["classify", str(folder), "-l", "cat,rocket,coffee", "-k", "3", "-b", "3", "-f", "jsonl", *rand_clip.args]
    local = CliRunner().invoke(app, [*args, "--no-cache"])
    on_ray = CliRunner().invoke(app, [*args, "--engine", "ray", "--workers", workers])
    assert local.exit_code == on_ray.exit_code == EXIT_SKIPPED, on_ray.output
    expected, got = jsonl(local.stdout), jsonl(on_ray.stdout)
    assert [r["path"] for r in got] == [r["path"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys() and a.get("label") == b.get("label") and a.get("error") == b.get("error")
        if "top_k" in a:
            assert [e["score"] for e in a["top_k"]] == pytest.approx([e["score"] for e in b["top_k"]], abs=1e-5)
    assert "skipped" in on_ray.stderr and "INFO" not in on_ray.stderr
