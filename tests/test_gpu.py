"""On a CUDA GPU (skipped elsewhere): fp16 autocast gives the CPU's answers, within half precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from clipzs.cli import app
from clipzs.errors import EXIT_OK
from tests.conftest import ModelFiles, jsonl
from tests.test_tiny_clip import CLASSES, drawn_folder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def run_on(device: str, files: ModelFiles, folder: Path, labels: str) -> list[dict[str, object]]:
    args = [a if a != "cpu" else device for a in files.args]
    result = CliRunner().invoke(app, ["classify", str(folder), "-l", labels, "--no-cache", *args])
    assert result.exit_code == EXIT_OK, result.output
    return jsonl(result.stdout)


@pytest.mark.parametrize("model_fixture", ["tiny_clip", "rand_clip"])
def test_cuda_agrees_with_cpu(model_fixture: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    files: ModelFiles = request.getfixturevalue(model_fixture)
    drawn_folder(tmp_path / "shapes", per_class=3, seed=3, size=96, fmt="jpg")  # JPEGs: decoded by nvJPEG
    labels = ",".join(CLASSES)
    cpu, gpu = (run_on(device, files, tmp_path / "shapes", labels) for device in ("cpu", "cuda"))
    for a, b in zip(cpu, gpu, strict=True):
        assert a["path"] == b["path"]
        scores_a = {e["label"]: e["score"] for e in a["top_k"]}  # type: ignore[union-attr]
        scores_b = {e["label"]: e["score"] for e in b["top_k"]}  # type: ignore[union-attr]
        shared = scores_a.keys() & scores_b.keys()
        assert max(abs(scores_a[k] - scores_b[k]) for k in shared) <= 5e-2  # fp16, and resizing on the GPU
    if model_fixture == "tiny_clip":
        assert sum(a["label"] == b["label"] for a, b in zip(cpu, gpu, strict=True)) / len(cpu) >= 0.97
