"""Damaged or hand-edited files a user hands clipzs: classifier files, eval datasets, label and template files,
sort manifests. Each gets one clear line and exit status 2, never a traceback, and nothing is lost."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clipzs.api import ZeroShotClassifier
from clipzs.classifier import Classifier
from clipzs.cli import app
from clipzs.errors import EXIT_OK, EXIT_USAGE, ClassifierError, UsageError
from clipzs.prompts import Label, labels_from_file, load_templates
from clipzs.sorting import Step, apply
from tests.conftest import ModelFiles, jsonl
from tests.tinyclip.shapes import draw

LABELS = ["red circle", "blue square"]
BOM = b"\xef\xbb\xbf"


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def refused(args: list[str], *phrases: str) -> None:
    """The command stops with exit status 2 and one line on stderr saying what is wrong."""
    code, stdout, stderr = cli(*args)
    assert code == EXIT_USAGE, (code, stderr)
    assert stdout == "" and len(stderr.splitlines()) == 1 and stderr.startswith("clipzs: error: "), stderr
    for phrase in phrases:
        assert phrase in stderr, stderr


def images(root: Path) -> list[Path]:
    """One drawn image per label, in folders named after their class (a/ and b/)."""
    rng = np.random.default_rng(5)
    paths = []
    for folder, label in zip("ab", LABELS, strict=True):
        (root / folder).mkdir(parents=True, exist_ok=True)
        paths.append(root / folder / "0.png")
        draw(label, rng).save(paths[-1])
    return paths


# Classifier files --------------------------------------------------------------------------------------------


@pytest.fixture
def valid_clf(tiny_clip: ModelFiles, tmp_path: Path) -> Path:
    checkpoint, config = str(tiny_clip.checkpoint), tiny_clip.config
    zsc = ZeroShotClassifier.from_pretrained(None, checkpoint, model_config=config, device="cpu")
    path = tmp_path / "valid.clf"
    zsc.build(LABELS, "simple", use_cache=False).save(path)
    return path


def rewrite(
    source: Path,
    target: Path,
    header: Callable[[dict[str, Any]], object] = lambda h: h,
    tensors: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] = lambda t: t,
) -> Path:
    """A copy of a classifier file with its JSON header and its tensors edited, as a hand or a bug would."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as f:
        meta = json.loads(f.metadata()["clipzs"])
        found = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    edited = {name: t.contiguous() for name, t in tensors(found).items()}
    save_file(edited, str(target), metadata={"clipzs": json.dumps(header(meta))})
    return target


def without(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda h: {k: v for k, v in h.items() if k != key}


def with_(**changes: object) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda h: {**h, **changes}


DAMAGED: dict[str, tuple[Callable[[dict[str, Any]], object], Callable[[dict[str, torch.Tensor]], Any], str]] = {
    "no labels key": (without("labels"), lambda t: t, "is damaged: it has no labels"),
    "labels a string": (with_(labels="red circle,blue square"), lambda t: t, "is damaged: it has no labels"),
    "a label without aliases": (
        with_(labels=[{"name": "red circle"}, {"name": "blue square", "aliases": ["blue square"]}]),
        lambda t: t,
        "is damaged: each label needs a name and a list of aliases",
    ),
    "header a list": (lambda h: [h], lambda t: t, "is not a clipzs classifier file"),
    "zero labels": (with_(labels=[]), lambda t: {"weights": t["weights"][:, :0]}, "is damaged: it has no labels"),
    "int weights": (lambda h: h, lambda t: {"weights": t["weights"].int()}, "its matrix holds int32"),
    "logit_scale not a number": (with_(logit_scale="abc"), lambda t: t, "its logit_scale 'abc' is not a positive"),
    "bias of the wrong length": (
        lambda h: h,
        lambda t: {**t, "bias": torch.zeros(3)},
        "its bias (shape (3,), torch.float32) is not 2 finite numbers",
    ),
    "duplicate labels": (
        with_(labels=[{"name": "red circle", "aliases": ["red circle"]}] * 2),
        lambda t: t,
        "the label 'red circle' is given twice",
    ),
    "model_config not text": (with_(model_config=5), lambda t: t, "its model_config should be text"),
}


@pytest.mark.parametrize("damage", DAMAGED)
def test_a_damaged_classifier_file_is_refused_in_one_line(damage: str, valid_clf: Path, tmp_path: Path) -> None:
    header, tensors, message = DAMAGED[damage]
    bad = rewrite(valid_clf, tmp_path / "bad.clf", header, tensors)
    with pytest.raises(ClassifierError, match=r"is damaged|is not a clipzs classifier"):
        Classifier.load(bad)
    refused(["classify", str(images(tmp_path)[0]), "-c", str(bad), "--device", "cpu"], str(bad), message)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_types_are_read_as_float32(dtype: torch.dtype, valid_clf: Path, tmp_path: Path) -> None:
    """A classifier saved in half precision (or double) by another tool scores like the float32 original."""
    other = rewrite(valid_clf, tmp_path / "other.clf", tensors=lambda t: {"weights": t["weights"].to(dtype)})
    paths = [str(p) for p in images(tmp_path / "img")]
    code, out, err = cli("classify", *paths, "-c", str(other), "--device", "cpu")
    assert code == EXIT_OK, err
    _, reference, _ = cli("classify", *paths, "-c", str(valid_clf), "--device", "cpu")
    assert [r["label"] for r in jsonl(out)] == [r["label"] for r in jsonl(reference)] == LABELS
    assert [r["score"] for r in jsonl(out)] == pytest.approx([r["score"] for r in jsonl(reference)], abs=0.02)
    assert Classifier.load(other).weights.dtype == torch.float32


def test_blank_prompts_of_odd_class_names_still_load(valid_clf: Path, tmp_path: Path) -> None:
    """A probe's class folder named "_" is prompted as " ": a file made so is whole, not damaged."""

    def blank(header: dict[str, Any]) -> dict[str, Any]:
        header["labels"][0] = {"name": "_", "aliases": [" "]}
        return header

    assert Classifier.load(rewrite(valid_clf, tmp_path / "blank.clf", header=blank)).names[0] == "_"


def test_a_matrix_for_features_of_another_width_is_refused(valid_clf: Path, tmp_path: Path) -> None:
    clf = Classifier.load(valid_clf)
    width = clf.weights.shape[0]
    clf.check_model(str(clf.meta["fingerprint"]), "tiny-clip", width=width)
    cut = Classifier.load(rewrite(valid_clf, tmp_path / "cut.clf", tensors=lambda t: {"weights": t["weights"][:32]}))
    with pytest.raises(ClassifierError, match=f"its matrix has 32 rows, but tiny-clip makes features of {width}"):
        cut.check_model(str(cut.meta["fingerprint"]), "tiny-clip", width=width)
    photo = images(tmp_path / "imgs")[0]  # and as a user meets it: the model loaded for the file checks it
    refused(["classify", str(photo), "-c", str(tmp_path / "cut.clf"), "--device", "cpu"], "its matrix has 32 rows")


# Eval datasets, labels and templates -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("rows.csv", b"path,label\na/0.png\nb/0.png,blue square\n", "rows.csv, line 2: the image has no label"),
        ("rows.csv", b"path,label\na/0.png,red\xe9\nb/0.png,b\n", "rows.csv: line 2 is not UTF-8 text"),
        ("rows.jsonl", b'{"path": "a/0.png", "label": null}\n', "rows.jsonl, line 1: the image has no label"),
        ("rows.jsonl", b'{"path": "a/0.png", "label": "a"}\n{"path": "b/0.png", "label": "\xff"}\n', "line 2 is not"),
    ],
)
def test_a_bad_dataset_file_names_its_line(name: str, content: bytes, message: str, tmp_path: Path) -> None:
    images(tmp_path)
    (tmp_path / name).write_bytes(content)
    refused(["eval", str(tmp_path / name), "--device", "cpu"], message)


def test_files_saved_by_windows_notepad_read_as_written(tiny_clip: ModelFiles, tmp_path: Path) -> None:
    """A byte-order mark and CRLF line ends, in labels, templates and datasets, are not part of the text."""
    labels = tmp_path / "labels.txt"
    labels.write_bytes(BOM + b"# my classes\r\nred circle\r\nblue square\r\n")
    assert labels_from_file(labels) == (Label("red circle", ("red circle",)), Label("blue square", ("blue square",)))
    templates = tmp_path / "templates.txt"
    templates.write_bytes(BOM + b"a photo of a {}.\r\n")
    assert load_templates(str(templates)) == ("a photo of a {}.",)

    paths = images(tmp_path)
    code, out, err = cli("classify", str(paths[0]), "--labels-file", str(labels), "-k", "5", *tiny_clip.args)
    assert code == EXIT_OK, err
    assert {e["label"] for e in jsonl(out)[0]["top_k"]} == set(LABELS)

    dataset = tmp_path / "rows.csv"
    dataset.write_bytes(BOM + b"path,label\r\na/0.png,red_circle\r\nb/0.png,blue_square\r\n")
    lines = tmp_path / "rows.jsonl"
    rows = [{"path": "a/0.png", "label": "red_circle"}, {"path": "b/0.png", "label": "blue_square"}]
    lines.write_bytes(BOM + "".join(json.dumps(row) + "\n" for row in rows).encode())
    for data in (dataset, lines):
        code, out, err = cli("eval", str(data), "-t", str(templates), "--format", "json", *tiny_clip.args)
        assert code == EXIT_OK, err
        assert json.loads(out)["classes"] == ["blue_square", "red_circle"]


def test_an_empty_templates_option_is_refused_not_taken_for_the_default(tmp_path: Path) -> None:
    """`-t "$TEMPLATES"` with the variable unset names no template set: refused, not run with the default set; and
    a misspelt set is refused before a model is loaded (probe fit --blend found it after fitting)."""
    photo = images(tmp_path / "imgs")[0]
    nowhere = ["--model-config", str(tmp_path / "missing.json")]  # (refused before a model is looked for)
    refused(["build-classifier", "-l", "a,b", "-t", "", "-o", str(tmp_path / "x.clf"), *nowhere], "template set ''")
    refused(["classify", str(photo), "-l", "a,b", "-t", "", *nowhere], "unknown template set ''")
    refused(
        ["probe", "fit", str(tmp_path / "imgs"), "--blend", "-t", "", "-o", str(tmp_path / "p.clf"), *nowhere], "''"
    )
    refused(["eval", str(tmp_path / "imgs"), "-t", "", *nowhere], "--templates names no template set")
    fit = ["probe", "fit", str(tmp_path / "imgs"), "--blend", "-t", "openai7", "-o", str(tmp_path / "p.clf")]
    refused([*fit, *nowhere], "unknown template set 'openai7'")
    assert not (tmp_path / "x.clf").exists() and not (tmp_path / "p.clf").exists()


def test_files_saved_as_utf16_are_read_or_refused(tmp_path: Path) -> None:
    """Notepad's "Unicode" and PowerShell's `>` write UTF-16 with a byte-order mark: read as written. Without the
    mark, the NUL byte beside each letter is refused, not made into labels."""
    labels, templates = tmp_path / "labels.txt", tmp_path / "templates.txt"
    for bom, codec in ((b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        labels.write_bytes(bom + "# mine\r\nred circle\r\ncafé\r\n".encode(codec))
        assert labels_from_file(labels) == (Label("red circle", ("red circle",)), Label("café", ("café",)))
        templates.write_bytes(bom + "a photo of a {}.\n".encode(codec))
        assert load_templates(str(templates)) == ("a photo of a {}.",)
    labels.write_bytes("red circle\nblue square\n".encode("utf-16-le"))
    with pytest.raises(UsageError, match=r"line 1 holds a NUL character.*save the file as UTF-8"):
        labels_from_file(labels)


# Sort manifests ----------------------------------------------------------------------------------------------


def sorted_copies(root: Path) -> Path:
    """Two images copied into label folders by clipzs's own sort steps; the manifest that records them."""
    sources = images(root / "src")
    manifest = root / "dest" / "clipzs-manifest.jsonl"
    steps = [
        Step(str(path), str(root / "dest" / label / path.name), label, 0.9, "copy")
        for path, label in zip(sources, LABELS, strict=True)
    ]
    list(apply(steps, manifest))
    return manifest


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"source": "a", "destination": "b", "label": "x", "score": 1, "mode": "copy"}\n\xff\n', "line 4 is not"),
        (b'{"source": 5, "destination": 6, "label": "x", "score": 1, "mode": "copy"}\n', "line 3: not a clipzs sort"),
        (b'[1, 2]\n{"source": "a.png"}\n', "line 3: not a clipzs sort manifest"),
        (b'{"source": "a", "destination": "b", "label": "x", "score": 1, "mode": "shred"}\n', "line 3: not a clip"),
    ],
)
def test_a_bad_manifest_is_refused_and_nothing_is_undone(content: bytes, message: str, tmp_path: Path) -> None:
    manifest = sorted_copies(tmp_path)
    kept = sorted(manifest.parent.rglob("*.png"))
    manifest.write_bytes(manifest.read_bytes() + content)
    refused(["sort", "--undo", str(manifest)], str(manifest), message)
    assert sorted(manifest.parent.rglob("*.png")) == kept and len(kept) == 2


def test_undo_leaves_a_destination_that_is_now_a_folder(tmp_path: Path) -> None:
    """The copy was replaced by a folder of the user's: undo reports that step, keeps the folder, does the rest."""
    manifest = sorted_copies(tmp_path)
    first, second = (tmp_path / "dest" / label / "0.png" for label in LABELS)
    first.unlink()
    first.mkdir()
    (first / "mine.txt").write_text("keep me")
    code, _, stderr = cli("sort", "--undo", str(manifest))
    assert code == EXIT_OK and "Traceback" not in stderr
    assert f"{first}: left: the destination is a folder now" in stderr
    assert (first / "mine.txt").read_text() == "keep me"
    assert not second.exists()
    assert sorted(p.name for p in (tmp_path / "src").rglob("*.png")) == ["0.png", "0.png"]


def test_a_failed_write_names_the_file_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk or a read-only folder is said of the file the user named, not of a hidden temporary one."""
    import errno

    from clipzs import cache

    target = tmp_path / "pets.clf"

    def full(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    with pytest.raises(OSError) as raised:
        cache.atomic_write(target, full)
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(target))
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind

    def read_only(**kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", f"{tmp_path}/.pets.clf.x1y2.tmp")

    monkeypatch.setattr(cache.tempfile, "mkstemp", read_only)
    with pytest.raises(PermissionError) as denied:
        cache.atomic_write(target, full)
    assert denied.value.filename == str(target)
