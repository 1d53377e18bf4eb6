"""The command line as users run it: CliRunner in-process, and real subprocesses for pipes and start-up."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from clipzs.cli import app
from clipzs.errors import EXIT_BROKEN_PIPE, EXIT_OK, EXIT_SKIPPED, EXIT_USAGE
from clipzs.model import LoadedModel
from tests.conftest import ModelFiles, jsonl

runner = CliRunner()


def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=input)
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.stderr


def test_help_and_version_do_not_import_torch() -> None:
    code = "import sys, clipzs, clipzs.cli; print(sorted(m for m in ('torch', 'open_clip') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for args in (["--version"], ["-V"], ["--help"], ["classify", "--help"], ["eval", "--help"]):
        command = [sys.executable, "-X", "importtime", "-m", "clipzs", *args]
        run = subprocess.run(command, capture_output=True, text=True)
        assert run.returncode == 0 and ("Usage:" in run.stdout if "--help" in args else "clipzs " in run.stdout), args
        imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
        assert not {"torch", "open_clip", "numpy"} & imported, args


def test_pipeline_through_a_real_process(rand_clip: ModelFiles, photos: list[Path], tmp_path: Path) -> None:
    """find ... | clipzs classify - : JSON Lines on stdout, one per path in order, diagnostics on stderr."""
    listing = "".join(f"{p}\n" for p in photos)
    env = {**os.environ, "CLIPZS_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "clipzs", "classify", "-", "--labels", "cat,rocket,coffee", *rand_clip.args],
        input=listing,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == EXIT_OK, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(photos)
    for line, path in zip(lines, photos, strict=True):
        record = json.loads(line)
        assert record["path"] == str(path)
        assert record["label"] in {"cat", "rocket", "coffee"}
        assert record["top_k"][0]["label"] == record["label"]
        assert sorted((e["score"] for e in record["top_k"]), reverse=True) == [e["score"] for e in record["top_k"]]
    assert "scored" in proc.stderr and "Traceback" not in proc.stderr


def test_formats_and_output_file(rand_clip: ModelFiles, photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    code, stdout, _ = run(
        "classify", str(photos[0]), str(photos[1]), "--labels", "cat,dog", "-k", "2", "-o", str(out), *rand_clip.args
    )
    assert code == EXIT_OK and stdout == ""
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [r["path"] for r in rows] == [str(photos[0]), str(photos[1])]
    assert {r["label_1"] for r in rows} <= {"cat", "dog"} and all(r["label"] == r["label_1"] for r in rows)
    code, stdout, _ = run("classify", str(photos[0]), "--labels", "cat,dog", "-f", "table", *rand_clip.args)
    assert code == EXIT_OK and str(photos[0].name) in stdout and ("cat" in stdout or "dog" in stdout)


def test_quiet_prints_nothing_on_stderr(rand_clip: ModelFiles, photos: list[Path]) -> None:
    code, stdout, stderr = run("classify", str(photos[0]), "--labels", "cat,dog", "-q", *rand_clip.args)
    assert code == EXIT_OK and len(jsonl(stdout)) == 1 and stderr == ""


def test_classifier_file_carries_its_model(rand_clip: ModelFiles, photos: list[Path], tmp_path: Path) -> None:
    clf = tmp_path / "pets.clf"
    code, _, stderr = run("build-classifier", "--labels", "cat,dog", "-o", str(clf), *rand_clip.args)
    assert code == EXIT_OK and "wrote" in stderr
    with_file = jsonl(run("classify", str(photos[1]), "--classifier", str(clf), "--device", "cpu")[1])
    with_labels = jsonl(run("classify", str(photos[1]), "--labels", "cat,dog", *rand_clip.args)[1])
    assert with_file == with_labels


def test_classifier_for_another_model_is_refused(
    rand_clip: ModelFiles, rand_sigmoid: ModelFiles, photos: list[Path], tmp_path: Path
) -> None:
    clf = tmp_path / "pets.clf"
    assert run("build-classifier", "--labels", "cat,dog", "-o", str(clf), *rand_clip.args)[0] == EXIT_OK
    code, stdout, stderr = run("classify", str(photos[0]), "--classifier", str(clf), *rand_sigmoid.args)
    assert code == EXIT_USAGE and stdout == "" and "was built for model rand-clip" in stderr


def test_a_classifier_for_another_model_is_refused_before_any_weights_load(
    rand_clip: ModelFiles, photos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With network, a tag's weights would be downloaded (hundreds of MB) only to be refused."""
    clf = tmp_path / "pets.clf"
    assert run("build-classifier", "--labels", "cat,dog", "-o", str(clf), *rand_clip.args)[0] == EXIT_OK

    from clipzs.model import load_model

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights loaded")

    monkeypatch.setattr("clipzs.api.load_model", no_loading)
    for other in (["-m", "ViT-B-32", "-p", "openai"], ["-m", "ViT-B-32"]):
        code, _, stderr = run("classify", str(photos[0]), "--classifier", str(clf), *other)
        assert code == EXIT_USAGE and "was built for model rand-clip" in stderr, other
    monkeypatch.setattr("clipzs.api.load_model", load_model)
    code, _, stderr = run("classify", str(photos[0]), "--classifier", str(clf), "-p", str(tmp_path / "weigths.pt"))
    assert code == EXIT_USAGE and "does not exist" in stderr  # a mistyped file is not taken for another model's


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--labels", "cat,dog", "--classifier", "x.clf"], "already holds labels"),
        ([], "exactly one of --labels"),
        (["--labels", "cat,dog", "--templates", "nope"], "unknown template set"),
        (["--labels", "cat,dog", "--model", "ViT-B-31"], "did you mean"),
        (["--labels", "cat,dog", "--model", "vit-b-32"], "did you mean ViT-B-32,"),
        (["--labels", "cat,dog", "--model", "ViT-B-32", "--pretrained", "missing/weights.pt"], "does not exist"),
        (["--labels", "cat,dog", "--model", "ViT-B-32", "--pretrained", "laion9000"], "known tags"),
        (["--labels", "cat,dog", "--format", "xml"], "unknown format"),
        (["--classifier", "missing.clf"], "does not exist"),
        (["--labels", "cat,dog", "--device", "cuda"], "no CUDA GPU"),
        (["--labels", "cat,dog", "--device", "cpu:x"], "unknown device 'cpu:x'"),
        (["--labels", "cat,dog", "--model", "ViT-B-32"], "ViT-B-32 needs its weights: --pretrained TAG"),
        (  # (not `clipzs models tiny-clip`, which knows no model of a config of one's own)
            ["--labels", "cat,dog", "--model-config", "tests/tinyclip/tiny-clip.json"],
            "tiny-clip (--model-config tests/tinyclip/tiny-clip.json) needs its weights: --pretrained CHECKPOINT",
        ),
        (["--labels", "cat,dog", "--pretrained", "tests/models/rand-clip.json"], "name its model with --model"),
    ],
)
def test_usage_errors_are_one_clear_line(photos: list[Path], args: list[str], message: str) -> None:
    if "cuda" in args and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, stdout, stderr = run("classify", str(photos[0]), *args)
    assert code == EXIT_USAGE and stdout == ""
    assert message in stderr and stderr.startswith("clipzs: error: ") and stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"vision_cfg": {"image_size": 64}}, "visual.positional_embedding is [17, 128], the model's [65, 128]"),
        ({"text_cfg": {"context_length": 8}}, "positional_embedding is [16, 64], the model's [8, 64]"),
    ],
)
def test_a_checkpoint_for_another_input_size_is_refused(
    tiny_clip: ModelFiles, photos: list[Path], tmp_path: Path, change: dict[str, dict[str, int]], key: str
) -> None:
    """open_clip would resize its position embeddings to the config's without a word: other numbers."""
    config = json.loads(tiny_clip.config.read_text())
    for part, values in change.items():
        config[part].update(values)
    other = tmp_path / "tiny-clip.json"  # (the checkpoint's model's name, another config)
    other.write_text(json.dumps(config))
    args = ["--model-config", str(other), "-p", str(tiny_clip.checkpoint), "--device", "cpu"]
    code, stdout, stderr = run("classify", str(photos[0]), "-l", "cat,dog", *args)
    assert code == EXIT_USAGE and stdout == "" and stderr.count("\n") == 1
    assert f"the checkpoint's {key}: it was trained for another image size" in stderr
    assert "give its --model or --model-config" in stderr
    assert run("classify", str(photos[0]), "-l", "cat,dog", *tiny_clip.args)[0] == EXIT_OK


@pytest.mark.parametrize("name", ["shapes-v2", "ViT-B-32"])
def test_a_model_config_is_the_model_given_with_it(
    tiny_clip: ModelFiles, photos: list[Path], tmp_path: Path, name: str
) -> None:
    """--model names the --model-config's model (as the README says), even the name of a built-in model, which
    open_clip would otherwise build instead of the file's; that model is as it was afterwards."""
    import open_clip

    config = tmp_path / "my-config.json"
    config.write_text(tiny_clip.config.read_text())
    args = ["-p", str(tiny_clip.checkpoint), "--device", "cpu", "-f", "jsonl", "--no-cache"]
    code, named, stderr = run(
        "classify", *map(str, photos[:2]), "-l", "cat,dog", "-m", name, "--model-config", str(config), *args
    )
    assert code == EXIT_OK, stderr
    assert named == run("classify", *map(str, photos[:2]), "-l", "cat,dog", "--model-config", str(config), *args)[1]
    assert open_clip.get_model_config("ViT-B-32")["embed_dim"] == 512  # the built-in config, put back


def test_models_of_an_unknown_name_suggest_names() -> None:
    code, stdout, stderr = run("models", "vit-b-32")
    assert code == EXIT_USAGE and stdout == "" and "(did you mean ViT-B-32," in stderr


def test_no_images_found(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    code, _, stderr = run("classify", str(tmp_path / "empty"), str(tmp_path / "missing"), "--labels", "a,b")
    assert code == EXIT_USAGE and "no images found" in stderr


def test_unreachable_hub_fails_fast_with_advice(photos: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights neither cached nor reachable: one message saying what to do, not a minute of retries."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    code, _, stderr = run("classify", str(photos[0]), "--labels", "cat,dog")
    assert code == EXIT_USAGE
    assert "cannot be reached" in stderr and "--pretrained PATH" in stderr


def test_offline_mode_fails_without_touching_the_network(photos: list[Path]) -> None:
    code, _, stderr = run("classify", str(photos[0]), "--labels", "cat,dog", "--model", "ViT-B-32", "-p", "openai")
    assert code == EXIT_USAGE and "HF_HUB_OFFLINE" in stderr


def test_listing_commands() -> None:
    code, stdout, _ = run("templates")
    assert code == EXIT_OK and "openai-80" in stdout and "(default)" in stdout
    assert run("templates", "simple")[1] == "a photo of a {}.\n"
    code, stdout, _ = run("models", "ViT-B-32-256")
    assert code == EXIT_OK and "ViT-B-32-256\tdatacomp_s34b_b86k\t(default)" in stdout
    code, stdout, stderr = run("models", "ViT-L-16")  # a model open_clip knows, with no weights to download
    assert code == EXIT_OK and stdout == "" and "ViT-L-16 has no pretrained tags" in stderr


class CountingEncoder:
    """Counts text encodings, to tell a cached classifier from a recomputed one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = LoadedModel.encode_tokens

        def counted(model: LoadedModel, tokens: object) -> object:
            self.calls += 1
            return original(model, tokens)

        monkeypatch.setattr(LoadedModel, "encode_tokens", counted)


def test_classifier_cache_reuse_and_invalidation(
    rand_clip: ModelFiles,
    rand_sigmoid: ModelFiles,
    photos: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    _isolated_cache: Path,
) -> None:
    encoder = CountingEncoder(monkeypatch)
    image = str(photos[0])
    first = run("classify", image, "--labels", "cat,dog", *rand_clip.args)
    assert first[0] == EXIT_OK and encoder.calls == 1
    second = run("classify", image, "--labels", "cat,dog", *rand_clip.args)
    assert second[1] == first[1] and encoder.calls == 1  # reused, same answer
    run("classify", image, "--labels", "cat,dog", "--templates", "simple", *rand_clip.args)
    assert encoder.calls == 2  # other templates: rebuilt
    run("classify", image, "--labels", "cat,dog", *rand_sigmoid.args)
    assert encoder.calls == 3  # other model: rebuilt
    run("classify", image, "--labels", "cat,dog,bird", *rand_clip.args)
    assert encoder.calls == 4  # other labels: rebuilt
    run("classify", image, "--labels", "cat,dog", "--no-cache", *rand_clip.args)
    assert encoder.calls == 5  # --no-cache: not read
    entries = sorted((_isolated_cache / "classifiers").iterdir())
    assert len(entries) == 4 and all(p.suffix == ".safetensors" for p in entries)  # no temporary files left

    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:50])  # damaged cache entries are rebuilt, not fatal
    again = run("classify", image, "--labels", "cat,dog", *rand_clip.args)
    assert again[0] == EXIT_OK and again[1] == first[1] and encoder.calls == 6


def test_help_shows_the_defaults() -> None:
    result = runner.invoke(app, ["classify", "--help"], env={"COLUMNS": "300"})
    flat = " ".join(result.stdout.split())
    assert result.exit_code == EXIT_OK
    for default in ("openai-7", "ViT-B-32-256", "datacomp_s34b_b86k", "32 on a CPU, 256 on a GPU"):
        assert default in flat


@pytest.mark.parametrize("args", [["models"], ["--help"], ["classify", "--help"]])
def test_a_closed_pipe_ends_quietly(args: list[str]) -> None:
    """`clipzs models | head -1`: the reader goes away; no traceback, the shell's SIGPIPE status."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipzs", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # gone before the first line: reading one first raced the child's last writes
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == EXIT_BROKEN_PIPE and stderr == ""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_help_to_a_full_disk_says_so() -> None:
    with open("/dev/full", "w") as full:
        run = subprocess.run([sys.executable, "-m", "clipzs", "--help"], stdout=full, stderr=subprocess.PIPE, text=True)
    assert run.returncode == EXIT_USAGE
    assert run.stderr == "clipzs: error: cannot write the output: No space left on device\n"


@pytest.mark.parametrize("fmt", ["table", "jsonl", "csv"])
def test_a_closed_pipe_ends_quietly_in_every_format(rand_clip: ModelFiles, photos: list[Path], fmt: str) -> None:
    """`clipzs classify ... -f table | true`: the same quiet SIGPIPE status whatever writes the results."""
    command = [sys.executable, "-m", "clipzs", "classify", *map(str, photos), "-l", "a,b", "-f", fmt, *rand_clip.args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == EXIT_BROKEN_PIPE, stderr
    assert "Traceback" not in stderr and "Error" not in stderr


def test_weights_of_another_model_say_so(tiny_clip: ModelFiles, rand_clip: ModelFiles, photos: list[Path]) -> None:
    code, _, stderr = run(
        "classify",
        str(photos[0]),
        "-l",
        "a,b",
        "--model-config",
        str(rand_clip.config),
        "-p",
        str(tiny_clip.checkpoint),
    )
    assert code == EXIT_USAGE and "another model's" in stderr and "--model-config" in stderr


def test_a_file_that_is_no_checkpoint_says_what_it_is(
    rand_clip: ModelFiles, photos: list[Path], tmp_path: Path
) -> None:
    clf, text = tmp_path / "pets.clf", tmp_path / "classes.txt"
    assert run("build-classifier", "-l", "cat,dog", "-o", str(clf), *rand_clip.args)[0] == EXIT_OK
    text.write_text("cat\ndog\n")
    pickled = tmp_path / "pickled.pt"
    torch.save({"weights": Fraction(1, 3)}, pickled)  # loading it would construct a Python object
    cases = [
        (clf, "is a clipzs classifier file, not model weights"),
        (text, "is not a checkpoint"),
        (pickled, "would need to run pickled code"),
    ]
    for weights, message in cases:
        args = ["--model-config", str(rand_clip.config), "-p", str(weights)]
        code, _, stderr = run("classify", str(photos[0]), "-l", "a,b", *args)
        assert code == EXIT_USAGE and message in stderr, stderr


def test_a_checkpoint_whose_name_is_not_utf8(tiny_clip: ModelFiles, photos: list[Path], tmp_path: Path) -> None:
    """A torch checkpoint loads; safetensors (which cannot open such a path) is refused with the reason."""
    for suffix in (".pt", ".safetensors"):
        weights = tmp_path / os.fsdecode(b"tiny\xff" + suffix.encode())
        if suffix == ".pt":
            from safetensors.torch import load_file

            torch.save(load_file(tiny_clip.checkpoint), weights)
        else:
            weights.write_bytes(tiny_clip.checkpoint.read_bytes())
        code, _, stderr = run(
            "classify", str(photos[0]), "-l", "a,b", "--model-config", str(tiny_clip.config), "-p", str(weights)
        )
        if suffix == ".pt":
            assert code == EXIT_OK, stderr
        else:
            assert code == EXIT_USAGE and "is not: rename it" in stderr and "another model" not in stderr, stderr


def test_a_weights_mismatch_is_told_in_one_line() -> None:
    from clipzs.model import _reason

    with pytest.raises(RuntimeError) as shapes:
        torch.nn.Linear(2, 3).load_state_dict(torch.nn.Linear(2, 4).state_dict())
    assert _reason(shapes.value) == (
        "the weights do not fit its layers: weight is [4, 2] in the checkpoint but [3, 2] in the model; "
        "bias is [4] in the checkpoint but [3] in the model"
    )
    with pytest.raises(RuntimeError) as keys:
        torch.nn.Linear(2, 3).load_state_dict({"weight": torch.zeros(3, 2), "extra": torch.zeros(1)})
    assert _reason(keys.value) == (
        "the weights do not fit its layers: 1 weights missing from the checkpoint (first: bias); "
        "1 weights in the checkpoint, not the model (first: extra)"
    )


@pytest.mark.parametrize(("content", "message"), [("not json", "not valid JSON"), ('{"a": 1}', "lacks embed_dim")])
def test_bad_model_config(tmp_path: Path, photos: list[Path], content: str, message: str) -> None:
    config = tmp_path / "mine.json"
    config.write_text(content)
    code, _, stderr = run("classify", str(photos[0]), "-l", "a,b", "--model-config", str(config), "-p", "x.pt")
    assert code == EXIT_USAGE and message in stderr


def test_written_files_follow_the_umask(rand_clip: ModelFiles, tmp_path: Path) -> None:
    """A classifier file is meant to be shared: it gets the usual permissions, not a temporary file's 0600."""
    clf = tmp_path / "pets.clf"
    assert run("build-classifier", "-l", "cat,dog", "-o", str(clf), *rand_clip.args)[0] == EXIT_OK
    umask = os.umask(0)
    os.umask(umask)
    assert clf.stat().st_mode & 0o777 == 0o666 & ~umask


def test_csv_scores_in_fixed_notation(rand_sigmoid: ModelFiles, photos: list[Path]) -> None:
    code, stdout, _ = run("classify", str(photos[0]), "-l", "cat,dog", "-f", "csv", *rand_sigmoid.args)
    (row,) = csv.DictReader(io.StringIO(stdout))
    assert code == EXIT_OK and "e-" not in row["score"] and len(row["score"].split(".")[1]) == 6
    assert list(row)[-2:] == ["label_2", "score_2"]  # two labels: no empty columns for a third to a fifth


def test_a_broken_install_is_one_line_saying_how_to_repair_it(
    tiny_clip: ModelFiles, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip now fails, as a broken install's does
    code, _, stderr = run("classify", str(photos[0]), "-l", "a,b", *tiny_clip.args)
    assert code == EXIT_USAGE and "open_clip cannot be imported" in stderr and "reinstall" in stderr
    assert "Traceback" not in stderr
    code, _, stderr = run("models")
    assert code == EXIT_USAGE and "reinstall" in stderr


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    code, _, stderr = run("classify", str(tmp_path / "nosuchdir"), "-l", "a,b")
    assert code == EXIT_USAGE and "no such file or folder" in stderr


def test_cached_hub_weights_load_without_network_and_with_the_tags_activation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, photos: list[Path]
) -> None:
    """A tag whose weights are in the hub cache loads with no network at all (HF_HUB_OFFLINE is set), and
    OpenAI's weights get the QuickGELU activation they were trained with, also under the plain name."""
    import open_clip
    import torch

    from clipzs.model import load_model

    torch.manual_seed(2)
    checkpoint = tmp_path / "cached.pt"
    torch.save(open_clip.create_model("ViT-B-32-quickgelu").state_dict(), checkpoint)
    monkeypatch.setattr("clipzs.model._cached_checkpoint", lambda cfg: str(checkpoint))
    loaded = load_model("ViT-B-32", "openai", device="cpu")
    assert loaded.fingerprint.startswith("ViT-B-32:openai|built:")
    assert type(loaded.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_after_a_killed_run(rand_clip: ModelFiles, photos: list[Path], tmp_path: Path, suffix: str) -> None:
    """Killed mid-run, the output holds whole lines only; --resume appends the rest, each path once."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(60):
        (folder / f"img{i}.jpg").write_bytes(photos[i % len(photos)].read_bytes())
    out = tmp_path / f"results{suffix}"
    env = {**os.environ, "CLIPZS_CACHE_DIR": str(tmp_path / "cache")}
    command = [
        sys.executable,
        "-m",
        "clipzs",
        "classify",
        str(folder),
        "-l",
        "cat,dog",
        "-b",
        "4",
        "-o",
        str(out),
        "-q",
        *rand_clip.args,
    ]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while (not out.exists() or out.read_text().count("\n") < 10) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    with open(out, "a") as f:
        f.write('{"path": "/half/a lin' if suffix == ".jsonl" else "/half/a lin")  # as if killed mid-line
    done = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_OK, done.stderr
    text = out.read_text(encoding="utf-8")
    paths = (
        [json.loads(line)["path"] for line in text.splitlines()]
        if suffix == ".jsonl"
        else [row["path"] for row in csv.DictReader(io.StringIO(text))]
    )
    assert sorted(paths) == sorted(str(p) for p in folder.iterdir())  # each exactly once, nothing half-written
    again = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == EXIT_OK and out.read_text(encoding="utf-8") == text  # nothing left to do


def test_resume_needs_an_output_file(photos: list[Path]) -> None:
    code, _, stderr = run("classify", str(photos[0]), "-l", "a,b", "--resume")
    assert code == EXIT_USAGE and "--resume needs --output" in stderr


def test_parquet_output_and_resume(rand_clip: ModelFiles, photos: list[Path], tmp_path: Path) -> None:
    """--output x.parquet: the same fields as JSON Lines; an interrupted run is carried on with --resume."""
    import pyarrow.parquet as pq

    out = tmp_path / "results.parquet"
    first, rest = photos[:3], photos[3:]
    listing = "".join(f"{p}\n" for p in first)
    assert run("classify", "-", "-l", "cat,dog", "-o", str(out), *rand_clip.args, input=listing)[0] == EXIT_OK
    (out / ".part-00001.parquet.1234.tmp").write_bytes(b"a part a killed run never finished")
    code, _, stderr = run("classify", *map(str, photos), "-l", "cat,dog", "-o", str(out), "--resume", *rand_clip.args)
    assert code == EXIT_OK and f"{len(first)} already in" in stderr
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(map(str, photos))
    expected = {r["path"]: r for r in jsonl(run("classify", *map(str, rest), "-l", "cat,dog", *rand_clip.args)[1])}
    for row in rows:
        if row["path"] in expected:
            assert {k: row[k] for k in ("path", "label", "score", "top_k")} == expected[row["path"]]
    assert run("classify", str(photos[0]), "-l", "a,b", "-f", "parquet")[0] == EXIT_USAGE  # needs --output
    before = sorted(out.iterdir())
    code, _, stderr = run("classify", str(photos[0]), "-l", "cat,dog", "-o", str(out), *rand_clip.args)
    assert code == EXIT_USAGE and "holds the parts of an earlier run" in stderr  # a rerun would add duplicate rows
    assert sorted(out.iterdir()) == before


def test_labels_given_more_than_once_add_up(rand_clip: ModelFiles, photos: list[Path]) -> None:
    """-l cat -l dog is -l cat,dog (the last one alone was used, the others dropped without a word); a label quoted
    whole keeps its comma."""
    args = ["-l", "cat", "-l", 'dog,"Washington, D.C."', "-k", "5", "-f", "jsonl", *rand_clip.args]
    code, stdout, stderr = run("classify", str(photos[0]), *args)
    assert code == EXIT_OK, stderr
    assert {e["label"] for e in jsonl(stdout)[0]["top_k"]} == {"cat", "dog", "Washington, D.C."}


def test_one_label_with_softmax_scores_warns(
    rand_clip: ModelFiles, rand_sigmoid: ModelFiles, photos: list[Path]
) -> None:
    """One softmax label scores every image 1.0: classify says so; SigLIP-style sigmoid scores need no warning."""
    code, stdout, stderr = run("classify", str(photos[0]), "-l", "cat", "-f", "jsonl", *rand_clip.args)
    assert code == EXIT_OK and jsonl(stdout)[0]["score"] == 1.0
    assert "one label, so every image scores 1.0" in stderr and "-l 'cat,something else'" in stderr
    _, _, stderr = run("classify", str(photos[0]), "-l", '"Washington, D.C."', *rand_clip.args)
    assert """-l '"Washington, D.C.",something else'""" in stderr, "the suggestion is one to copy: quoted as it must be"
    _, _, stderr = run("classify", str(photos[0]), "-l", "cat,dog", *rand_clip.args)
    assert "one label" not in stderr
    code, stdout, stderr = run("classify", str(photos[0]), "-l", "cat", "-f", "jsonl", *rand_sigmoid.args)
    assert code == EXIT_OK and jsonl(stdout)[0]["score"] < 1.0 and "one label" not in stderr


def test_top_k_ranks_that_many_labels_best_first(rand_clip: ModelFiles, photos: list[Path]) -> None:
    args = ["classify", str(photos[0]), "-l", "cat,dog,rocket,coffee", "-k", "2", *rand_clip.args]
    record = jsonl(run(*args, "-f", "jsonl")[1])[0]
    scores = [entry["score"] for entry in record["top_k"]]
    assert len(scores) == 2 and scores == sorted(scores, reverse=True)
    assert record["label"] == record["top_k"][0]["label"]
    header = next(csv.reader(io.StringIO(run(*args, "-f", "csv")[1])))
    assert header[-2:] == ["label_2", "score_2"] and "label_3" not in header


def test_no_cache_writes_no_cache(rand_clip: ModelFiles, photos: list[Path], tmp_path: Path) -> None:
    code, _, _ = run("classify", str(photos[0]), "-l", "fresh one,fresh two", "--no-cache", *rand_clip.args)
    cache = tmp_path / "cache"  # (the test's own: conftest)
    assert code == EXIT_OK and not (cache / "classifiers").exists() and not (cache / "features.sqlite3").exists()
    run("classify", str(photos[0]), "-l", "fresh one,fresh two", *rand_clip.args)
    assert any((cache / "classifiers").iterdir()) and (cache / "features.sqlite3").exists()  # (where they go)


def test_a_terminal_gets_a_table(rand_clip: ModelFiles, photos: list[Path], tmp_path: Path) -> None:
    """No --format: a table when stdout is a terminal (a pseudo-terminal here), JSON Lines in a pipe."""
    import pty

    leader, follower = pty.openpty()
    env = {**os.environ, "CLIPZS_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "200"}
    command = [sys.executable, "-m", "clipzs", "classify", str(photos[0]), "-l", "cat,dog", *rand_clip.args]
    with subprocess.Popen(command, stdout=follower, stderr=subprocess.DEVNULL, env=env) as proc:
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal's other end closed
                break
            if not chunk:
                break
            shown += chunk
        assert proc.wait(timeout=120) == EXIT_OK
    os.close(leader)
    text = shown.decode("utf-8", "replace")
    assert photos[0].name in text and "label" in text and not text.lstrip().startswith("{")


def test_names_are_shown_as_they_are_not_as_emoji_codes(
    tiny_clip: ModelFiles, photos: list[Path], tmp_path: Path
) -> None:
    """rich turns ':cat:' into a cat emoji, and '[/old]' is markup to it: a file so named is shown by its name."""
    missing = tmp_path / "a:cat:b [/old].jpg"
    code, _, stderr = run("classify", str(photos[0]), str(missing), "-l", "cat,dog", "-q", *tiny_clip.args)
    assert code == EXIT_SKIPPED
    assert f"clipzs: skipped {missing}: no such file" in stderr


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE")
def test_no_room_to_write_is_said_of_the_file_and_caches_only_cost_time(
    rand_clip: ModelFiles, photos: list[Path], tmp_path: Path
) -> None:
    """No room to write (a file size limit stands in for a full disk): build-classifier names the file it could
    not write, and classify, whose caches cannot be written, gives every result all the same. Both ended in a
    traceback: safetensors raised an error of its own, not OSError."""
    import resource

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    env = {**os.environ, "CLIPZS_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "clipzs", *rand_clip.args, "-l", "cat,rocket"]
    clf = tmp_path / "pets.clf"
    built = subprocess.run(
        [*command[:3], "build-classifier", *command[3:], "-o", str(clf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=small_files,
    )
    assert built.returncode == EXIT_USAGE, built.stderr
    assert built.stderr.splitlines() == [f"clipzs: error: {clf}: File too large"]
    assert not clf.exists() and list(tmp_path.glob(".pets.clf*")) == []
    folder = str(photos[0].parent)
    done = subprocess.run(
        [*command[:3], "classify", folder, *command[3:], "-f", "jsonl"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=small_files,  # (stdout is a pipe, which the limit does not bound)
    )
    assert done.returncode == EXIT_OK and "Traceback" not in done.stderr, done.stderr
    _, expected, _ = run("classify", folder, *command[3:], "-f", "jsonl", "--no-cache")
    assert jsonl(done.stdout) == jsonl(expected)


def test_ctrl_c_before_a_command_starts_is_no_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while Typer starts up, before a command's own handling: 'interrupted' and 130, as in a command."""
    import clipzs.cli

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(clipzs.cli, "app", interrupted)
    monkeypatch.setattr(sys, "argv", ["clipzs", "templates"])
    with pytest.raises(SystemExit) as exit_:
        clipzs.cli.main()
    assert exit_.value.code == 130 and capsys.readouterr().err == "clipzs: interrupted\n"
