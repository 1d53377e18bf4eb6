"""Evaluation on the user's labelled images: reading the dataset, and the metrics as pure functions.

A dataset is a folder with one sub-folder per class (the folder name is the label), or a CSV / JSON Lines file
of ``path,label`` rows (paths relative to the file's folder).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipzs.errors import ClipzsWarning, ImageError, UsageError
from clipzs.images import image_extensions, walk
from clipzs.output import some_of
from clipzs.prompts import Label, as_text, is_text, read_text

if TYPE_CHECKING:
    import torch

    from clipzs.api import ZeroShotClassifier


@dataclass(frozen=True)
class Dataset:
    """Labelled image paths; ``classes`` in a stable order, ``targets[i]`` indexes ``classes``."""

    paths: list[Path]
    targets: list[int]
    classes: list[str]


def load_dataset(root: Path) -> Dataset:
    """Read a class-per-folder tree, or a CSV / JSON Lines file of path,label; raise UsageError if unusable."""
    if root.is_dir():
        pairs = _from_folders(root)
    elif root.suffix.lower() == ".csv":
        pairs = _from_csv(root)
    elif root.suffix.lower() in (".jsonl", ".ndjson"):
        pairs = _from_jsonl(root)
    elif root.exists():
        raise UsageError(f"{root}: give a folder with one sub-folder per class, or a .csv / .jsonl of path,label")
    else:
        raise UsageError(f"{root} does not exist")
    pairs = _once_each(pairs, root)
    classes = sorted({label for _, label in pairs})
    for name in classes:  # (refused now: it would fail once every image is encoded, or a probe trained)
        if not is_text(name):
            raise UsageError(
                f"{root}: the class {name!r} is not UTF-8 text (a folder named in another encoding?): rename it, "
                "or list the images in a CSV of path,label"
            )
    if len(classes) < 2:
        raise UsageError(f"{root} holds {len(classes)} class{'es' if not classes else ''}: it needs two or more")
    index = {name: i for i, name in enumerate(classes)}
    return Dataset([path for path, _ in pairs], [index[label] for _, label in pairs], classes)


def _once_each(pairs: list[tuple[Path, str]], root: Path) -> list[tuple[Path, str]]:
    """Each image once: a repeated row would count twice, and a few-shot probe could train on an image it is
    then tested on. The same image under two labels is refused (this is single-label accuracy)."""
    labels: dict[str, str] = {}
    kept: list[tuple[Path, str]] = []
    for path, label in pairs:
        key = os.path.realpath(path)  # one file by any name: a linked class folder, a relative and absolute path
        if key not in labels:
            labels[key] = label
            kept.append((path, label))
        elif labels[key] != label:
            raise UsageError(f"{root}: {path} is labelled both {labels[key]!r} and {label!r}; give it one label")
    if len(kept) < len(pairs):
        more = len(pairs) - len(kept)
        warnings.warn(f"{root}: {more} images are listed more than once; each counts once", ClipzsWarning, stacklevel=3)
    return kept


def _from_folders(root: Path) -> list[tuple[Path, str]]:
    pairs: list[tuple[Path, str]] = []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    extensions = image_extensions()
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in extensions and p.name[0] != "."]
    if loose:
        warnings.warn(
            f"{root}: {len(loose)} images lie beside the class folders, in no class: left out",
            ClipzsWarning,
            stacklevel=3,
        )
    empty = []
    inner: list[set[str]] = []  # per class, the sub-folders its images lie in; empty where some lie in it directly
    for folder in folders:
        images = walk(folder)
        if not images:
            empty.append(folder.name)
        pairs += [(image, folder.name) for image in images]
        places = [image.relative_to(folder).parts for image in images]
        inner.append({parts[0] for parts in places} if all(len(parts) > 1 for parts in places) else set())
    if empty:  # (such as the __MACOSX folder of an archive made on a Mac, which holds only hidden files)
        raise UsageError(
            f"class folder{'s' if len(empty) > 1 else ''} without images in {root}: {', '.join(empty)}; every class "
            f"needs an image: put images in, or move {'them' if len(empty) > 1 else 'it'} out of {root}"
        )
    shared = sorted(set.intersection(*inner)) if inner else []
    if len(shared) >= 2:  # train/cat, train/dog, val/cat, val/dog: the classes would be 'train' and 'val'
        names = some_of([folder.name for folder in folders], 5)
        held = f"folder {names} holds its" if len(folders) == 1 else f"folders {names} all hold their"
        message = f"{root}: the class {held} images in the sub-folders {some_of(shared, 5)}: if those are the "
        hint = f"classes, give the folder that holds them, such as {folders[0]}"
        warnings.warn(message + hint, ClipzsWarning, stacklevel=3)
    return pairs


def _from_csv(path: Path) -> list[tuple[Path, str]]:
    reader = csv.DictReader(io.StringIO(read_text(path, "dataset"), newline=""))
    if not {"path", "label"} <= set(reader.fieldnames or ()):
        raise UsageError(f"{path} needs a header with the columns path and label")
    pairs = []
    try:
        for row in reader:
            if row["path"]:  # a row without a path is skipped
                pairs.append((_image(row["path"], path, reader.line_num), _label(row["label"], path, reader.line_num)))
    except csv.Error as e:
        raise UsageError(f"{path}, line {reader.line_num}: {e}") from e
    return pairs


def _from_jsonl(path: Path) -> list[tuple[Path, str]]:
    pairs = []
    for number, line in enumerate(read_text(path, "dataset").split("\n"), start=1):  # a name may hold U+2028
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            pairs.append((_image(record["path"], path, number), _label(record["label"], path, number)))
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f'{path}, line {number}: expected {{"path": ..., "label": ...}}') from e
    return pairs


def _image(value: object, path: Path, line: int) -> Path:
    """A dataset row's image, relative to the dataset file's folder; a path no file can have names its line."""
    if not isinstance(value, str):
        raise TypeError(f"a path is text, not {value!r}")
    if "\0" in value:
        raise UsageError(f"{path}, line {line}: the path holds a NUL character, which no file name can")
    return path.parent / value


def _label(value: object, path: Path, line: int) -> str:
    """A dataset row's label as text (a number is taken as its digits); a row without one, or with a list or
    an object for one, is an error naming its line."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float, type(None))):
        raise UsageError(f"{path}, line {line}: a label is text, not {value!r}")
    label = "" if value is None else str(value).strip()  # 'cat ' is 'cat', as in --labels and labels files
    if not label:
        raise UsageError(f"{path}, line {line}: the image has no label")
    return label


@dataclass(frozen=True)
class Metrics:
    """Accuracy figures of scores [N, C] against true class indices [N]."""

    top1: float
    top5: float
    mean_per_class_recall: float
    """Over the classes with images: a class none of whose images could be read has no recall."""
    per_class_recall: list[float | None]
    """None for a class without images."""
    support: list[int]
    confusion: list[list[int]] = field(repr=False)
    """confusion[true][predicted] counts."""
    other: list[int] = field(repr=False)
    """Per class, its images predicted as a label that is no class (a classifier file's catch-all, say)."""


def metrics(scores: np.ndarray, targets: Sequence[int] | np.ndarray, classes: int | None = None) -> Metrics:
    """Top-1 and top-5 accuracy, recall per class and its mean, and the confusion matrix. The columns of
    ``scores`` past the first ``classes`` (default: none) are labels that name no class: they compete like the
    others, and an image predicted as one of them is wrong, counted in ``other`` rather than the confusion."""
    truth = np.asarray(targets)
    labels = scores.shape[1]
    classes = labels if classes is None else classes
    ranked = np.argsort(-scores, axis=1, kind="stable")
    predicted = ranked[:, 0]
    top5 = (ranked[:, : min(5, labels)] == truth[:, None]).any(axis=1)
    counts = np.zeros((classes, labels), dtype=np.int64)
    np.add.at(counts, (truth, predicted), 1)
    confusion = counts[:, :classes]
    support = counts.sum(axis=1)
    present = support > 0
    recall = np.divide(np.diag(confusion), support, out=np.zeros(classes), where=present)
    return Metrics(
        top1=float((predicted == truth).mean()),
        top5=float(top5.mean()),
        mean_per_class_recall=float(recall[present].mean()),
        per_class_recall=[float(r) if seen else None for r, seen in zip(recall, present, strict=True)],
        support=support.tolist(),
        confusion=confusion.tolist(),
        other=counts[:, classes:].sum(axis=1).tolist(),
    )


@dataclass(frozen=True)
class Run:
    """One model with one template set, measured on a dataset."""

    model: str
    pretrained: str
    templates: str
    images: int
    metrics: Metrics
    shots: int | None = None  # a probe fitted on this many images per class; None: zero-shot or a classifier file
    seed: int | None = None  # the --seed that drew those images (the report alone then says how to redo it)

    def to_dict(self, classes: Sequence[str]) -> dict[str, object]:
        m = self.metrics
        return {
            "model": self.model,
            "pretrained": self.pretrained,
            "templates": self.templates,
            "images": self.images,
            "shots": self.shots,
            "seed": self.seed,
            "top1": m.top1,
            "top5": m.top5,
            "mean_per_class_recall": m.mean_per_class_recall,
            "per_class": [
                {"class": name, "recall": recall, "support": support, "other": other}
                for name, recall, support, other in zip(classes, m.per_class_recall, m.support, m.other, strict=True)
            ],
            "confusion": m.confusion,
        }


def class_labels(classes: Sequence[str], mapping: Sequence[Label] = ()) -> list[Label]:
    """Each class with its prompts: the mapping's aliases where it names the class (``folder=alias|alias``),
    else the class name with underscores read as spaces ("golden_retriever" is prompted as "golden retriever")."""
    by_text = {as_text(label.name): label for label in mapping}  # (a folder named on macOS is the class of its name)
    texts = {as_text(name) for name in classes}
    unused = sorted(label.name for text, label in by_text.items() if text not in texts)
    if unused:  # a typo would quietly prompt the class by its folder name instead, and lower its accuracy
        shown = some_of([repr(label) for label in unused], 5)
        message = f"{len(unused)} labels of the labels file name no class of the dataset: {shown}"
        warnings.warn(message, ClipzsWarning, stacklevel=2)
    labels = []
    for name in classes:
        given = by_text.get(as_text(name))
        labels.append(Label(name, given.aliases if given else (spoken(name),)))
    return labels


def spoken(class_name: str) -> str:
    """How a class is prompted by its name: underscores read as spaces ("golden_retriever": "golden retriever")."""
    return class_name.replace("_", " ")


def encode_dataset(
    zsc: ZeroShotClassifier, paths: Sequence[Path], targets: Sequence[int], *, use_cache: bool = True
) -> tuple[torch.Tensor, list[int], list[tuple[Path, str]]]:
    """Features [N, D] of the readable images with their targets, and the unreadable ones with the reasons."""
    import torch

    features, kept, skipped = [], [], []
    for (path, x), target in zip(zsc.encode_paths(paths, use_cache=use_cache), targets, strict=True):
        if isinstance(x, ImageError):
            skipped.append((path, str(x)))
        else:
            features.append(x)
            kept.append(target)
    if not features:
        shown = "; ".join(f"{path}: {why}" for path, why in skipped[:3])
        more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        missing = all(why == "no such file" for _, why in skipped)
        hint = " (the paths of a CSV or JSON Lines dataset are read from its own folder)" if missing else ""
        raise UsageError(f"none of the dataset's {len(skipped)} images could be read: {shown}{more}{hint}")
    return torch.stack(features), kept, skipped


def evaluate_model(
    zsc: ZeroShotClassifier,
    dataset: Dataset,
    labels: Sequence[Label],
    template_sets: Sequence[str],
    *,
    shots: Sequence[int] = (),
    seed: int = 0,
    use_cache: bool = True,
) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Encode the dataset's images once, then measure each template set's classifier on those features, and
    for each number of ``shots`` a probe trained on that many images per class and tested on all the others.

    Returns the runs and the images that could not be read (left out of the figures), with the reasons.
    """
    from clipzs.probe import check_every_class_seen, check_seed, few_shot, fit_probe

    check_seed(seed)
    # The classifiers first: labels the model cannot tell apart are refused before the images are encoded.
    built = [(templates, zsc.build(labels, templates, use_cache=use_cache)) for templates in template_sets]
    features, targets, skipped = encode_dataset(zsc, dataset.paths, dataset.targets, use_cache=use_cache)
    runs = []
    for templates, classifier in built:
        scores = zsc.logits(features, classifier).numpy()  # the ranking is all the metrics need
        runs.append(Run(zsc.model.name, zsc.model.pretrained, templates, len(targets), metrics(scores, targets)))
    x, y = features.numpy(), np.asarray(targets)
    if shots:
        try:
            check_every_class_seen(labels, set(targets), dataset, dict(skipped))
        except UsageError as e:  # the zero-shot runs are still reported
            warnings.warn(f"--shots left out: {e}", ClipzsWarning, stacklevel=2)
            shots = ()
    for k in shots:
        chosen = few_shot(y, k, seed)
        rest = np.setdiff1d(np.arange(len(y)), chosen)
        if len(rest) == 0:  # (the smaller counts still make a curve)
            warnings.warn(f"{k} shots per class leave no image to test on: left out", ClipzsWarning, stacklevel=2)
            continue
        untested = [dataset.classes[c] for c in sorted(set(y.tolist()) - set(y[rest].tolist()))]
        if untested:  # all their images train the probe: its figures say nothing of them
            shown = some_of(untested, 10)
            message = f"{k} shots per class leave no image to test on of {len(untested)} classes, which the "
            warnings.warn(f"{message}{k}-shot probe's figures leave out: {shown}", ClipzsWarning, stacklevel=2)
        probe = fit_probe(x[chosen], y[chosen], len(labels), seed=seed).classifier
        scores = probe.logits(x[rest])  # the ranking is all the metrics need: no softmax
        measured = metrics(scores, y[rest])
        name = f"{k}-shot probe"
        runs.append(Run(zsc.model.name, zsc.model.pretrained, name, len(rest), measured, shots=k, seed=seed))
    return runs, skipped


def evaluate_classifier(
    zsc: ZeroShotClassifier, dataset: Dataset, name: str, *, use_cache: bool = True
) -> tuple[Run, list[tuple[Path, str]]]:
    """Measure a loaded classifier (zero-shot, probe or blend) whose labels name the dataset's classes: a class
    ``golden_retriever`` is the label of that name, or else of ``golden retriever``, as eval prompts it. Its other
    labels (a catch-all "something else", say) compete too, as in ``classify``: an image predicted as one is
    wrong, and counted in ``Metrics.other``."""
    assert zsc.classifier is not None
    names = zsc.classifier.names
    where: dict[str, int] = {}
    for column, label in enumerate(names):
        where.setdefault(as_text(label), column)
    columns = {c: where[n] for c in dataset.classes for n in (as_text(spoken(c)), as_text(c)) if n in where}
    missing = [c for c in dataset.classes if c not in columns]
    if missing:
        shown = some_of(missing, 10)
        known = ", ".join(map(repr, names[:10])) + (" ..." if len(names) > 10 else "")
        raise UsageError(f"classifier {name} has no label for the classes {shown}; its labels are {known}")
    features, targets, skipped = encode_dataset(zsc, dataset.paths, dataset.targets, use_cache=use_cache)
    order = [columns[c] for c in dataset.classes]
    order += [column for column in range(len(names)) if column not in order]  # the labels that are no class
    scores = zsc.logits(features).numpy()[:, order]
    kind = str(zsc.classifier.meta.get("kind", "zero-shot"))
    measured = metrics(scores, targets, len(dataset.classes))
    run = Run(zsc.model.name, zsc.model.pretrained, f"{name} ({kind})", len(targets), measured)
    return run, skipped


def check_plot_path(path: Path) -> None:
    """Refuse, before any work, a plot file whose suffix matplotlib cannot write (or no matplotlib)."""
    plt = _pyplot()
    kinds = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if path.suffix.lower().lstrip(".") not in kinds:
        raise UsageError(f"--plot {path}: matplotlib writes {', '.join('.' + kind for kind in sorted(kinds))}")


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise UsageError("--plot needs matplotlib: pip install matplotlib") from e
    return plt


def plot_few_shot(runs: Sequence[Run], path: Path) -> None:
    """Top-1 of the k-shot probes against k, per model, with each zero-shot run and classifier file as a
    horizontal line."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.set_xscale("log", base=2)
    colors = itertools.cycle(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for model in dict.fromkeys((run.model, run.pretrained) for run in runs):
        own = [run for run in runs if (run.model, run.pretrained) == model]
        color = next(colors)
        probes = sorted((run.shots, run.metrics.top1) for run in own if run.shots is not None)
        if probes:  # (a classifier file's model has none)
            # A checkpoint by its file name, as plot_confusion's title names it: a whole path runs off the legend.
            name = f"{model[0]} ({Path(model[1]).name}) probe"
            axes.plot(*zip(*probes, strict=True), marker="o", color=color, label=name)
            axes.set_xticks([k for k, _ in probes], [str(k) for k, _ in probes])
        others = [run for run in own if run.shots is None]
        for run, style in zip(others, itertools.cycle(["--", ":", "-."]), strict=False):
            axes.axhline(run.metrics.top1, linestyle=style, color=color, label=run.templates)
    axes.minorticks_off()
    axes.set_xlabel("labelled images per class")
    axes.set_ylabel("top-1 accuracy")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def best_run(runs: Sequence[Run]) -> Run:
    """The run of the best top-1 among those tested on every image: a few-shot probe is tested on the images it
    was not trained on, fewer, and so not comparable."""
    most = max(run.images for run in runs)
    return max((run for run in runs if run.images == most), key=lambda run: run.metrics.top1)


NAMED_IN_PLOT = 50
"""Up to this many classes the confusion plot names them and grows with them; beyond, it is 1200 pixels square
(about a pixel per class for ImageNet's 1000, unnamed: their order is that of --format json), so memory stays
bounded."""


def plot_confusion(run: Run, classes: Sequence[str], path: Path) -> None:
    """The confusion matrix as a PNG, rows normalised to recall (matplotlib, an optional dependency); a last
    column for the images predicted as a classifier's labels that are no class, if any were."""
    plt = _pyplot()
    counts = np.asarray(run.metrics.confusion, dtype=float)
    columns = list(classes)
    if any(run.metrics.other):
        counts = np.column_stack([counts, run.metrics.other])
        columns.append("(other labels)")
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    named = len(columns) <= NAMED_IN_PLOT
    side = max(4.0, 0.45 * len(columns) + 2) if named else 12.0
    figure, axes = plt.subplots(figsize=(side + 1, side))
    shown = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    if named:
        axes.set_xticks(range(len(columns)), columns, rotation=90)
        axes.set_yticks(range(len(classes)), classes)
    order = "" if named else f" ({len(classes)} classes, in the order of --format json)"
    axes.set_xlabel(f"predicted{order}")
    axes.set_ylabel("true")
    weights = Path(run.pretrained).name  # a checkpoint by its file name: a whole path runs off the figure
    title = f"{run.model} ({weights}), {run.templates}: top-1 {run.metrics.top1:.1%}"
    axes.set_title(title, wrap=True, fontsize="medium")
    figure.colorbar(shown, ax=axes, label="fraction of the true class")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
