"""The clipzs command line: parse options, check them (and where output goes) before the model loads, call the
library, render results.

torch and open_clip are imported only inside the commands that need them, so --help and --version are instant.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Optional, TextIO

import typer

from clipzs.config import (
    CACHE_ENV,
    DEFAULT_BATCH_SIZE,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    DEFAULT_TEMPLATES,
    DEFAULT_TOP_K,
    GPU_BATCH_SIZE,
)
from clipzs.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_SKIPPED,
    EXIT_USAGE,
    ClipzsError,
    ClipzsWarning,
    UsageError,
)

if TYPE_CHECKING:
    from rich.console import Console

    from clipzs.api import ZeroShotClassifier
    from clipzs.classifier import Classifier
    from clipzs.evaluate import Run
    from clipzs.output import Writer
    from clipzs.prediction import Prediction
    from clipzs.prompts import Label
    from clipzs.sorting import Step

app = typer.Typer(
    name="clipzs",
    help="Zero-shot image classification with CLIP models: name the classes, get labels for your images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""What a write says when a disk (or a quota, or a file-size limit) has no room left."""
FLAG = ""
"""The metavar of an on/off option: Typer would otherwise show its type, <bool>, as if it took a value."""
LabelsOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--labels",
        "-l",
        help="Comma-separated labels (repeat it to add more); a label may carry aliases: 'cat=cat|kitten,dog'; one "
        "holding commas is quoted whole: '\"Washington, D.C.\",Paris'.",
    ),
]
LabelsFileOpt = Annotated[
    Optional[Path], typer.Option("--labels-file", help="A text file with one label (same syntax) per line.")
]
TemplatesOpt = Annotated[
    Optional[str],
    typer.Option(
        "--templates",
        "-t",
        help="Built-in template set (see `clipzs templates`) or a file, one template per line with '{}' for the label.",
        show_default=DEFAULT_TEMPLATES,
    ),
]
ModelOpt = Annotated[
    Optional[str], typer.Option("--model", "-m", help="open_clip model name.", show_default=DEFAULT_MODEL)
]
PretrainedOpt = Annotated[
    Optional[str],
    typer.Option(
        "--pretrained",
        "-p",
        help="open_clip pretrained tag, or a local checkpoint file (state dict or safetensors).",
        show_default=f"{DEFAULT_PRETRAINED}, the default model's; another model's must be named",
    ),
]
ModelConfigOpt = Annotated[
    Optional[Path], typer.Option("--model-config", help="A custom open_clip model config JSON (names the model).")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda, then mps, then cpu), cpu, cuda or mps.")]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="How the image encoder computes: auto (fp16 on a CUDA GPU, else fp32), fp32, bf16 (CUDA, or CPUs with "
        "AMX or AVX-512 BF16: several times faster), fp16 (CUDA) or int8 (CPU). Other than fp32: slightly different "
        "scores.",
    ),
]
QuietOpt = Annotated[
    bool,
    typer.Option("--quiet", "-q", metavar=FLAG, help="No progress bar, no summary; skipped files are still named."),
]
NoCacheOpt = Annotated[
    bool,
    typer.Option("--no-cache", metavar=FLAG, help="Neither read nor write the caches (classifiers, image features)."),
]


def _version(value: bool) -> None:
    if value:
        from clipzs import __version__

        typer.echo(f"clipzs {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", metavar=FLAG, callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Zero-shot image classification with CLIP models."""


@app.command()
def classify(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders (walked recursively), or - to read paths from stdin.", metavar="PATH"
        ),
    ],
    labels: LabelsOpt = None,
    labels_file: LabelsFileOpt = None,
    classifier: Annotated[
        Optional[Path], typer.Option("--classifier", "-c", help="A classifier file made by `clipzs build-classifier`.")
    ] = None,
    templates: TemplatesOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    model_config: ModelConfigOpt = None,
    device: DeviceOpt = "auto",
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--batch-size",
            "-b",
            min=1,
            help="Images per forward pass.",
            show_default=f"{DEFAULT_BATCH_SIZE} on a CPU, {GPU_BATCH_SIZE} on a GPU",
        ),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many ranked labels to report.")] = (
        DEFAULT_TOP_K
    ),
    fmt: Annotated[
        Optional[str],
        typer.Option(
            "--format",
            "-f",
            help="jsonl, csv, table or parquet (a folder of parts, with --output).",
            show_default="by --output's suffix, else table on a terminal, else jsonl",
        ),
    ] = None,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Write results to this file instead of stdout.")
    ] = None,
    quiet: QuietOpt = False,
    no_cache: NoCacheOpt = False,
    resume: Annotated[
        bool, typer.Option("--resume", metavar=FLAG, help="Append to --output, skipping the paths it already holds.")
    ] = False,
    engine: Annotated[
        str, typer.Option("--engine", help="local, or ray: Ray Data on a cluster (RAY_ADDRESS) or a local instance.")
    ] = "local",
    workers: Annotated[
        Optional[int],
        typer.Option("--workers", min=1, help="Ray: model actors. [default: one per GPU, else one per node]"),
    ] = None,
    precision: PrecisionOpt = "auto",
) -> None:
    """Score images against labels; one result per image, in input order."""
    from clipzs.images import discover
    from clipzs.output import choose_format

    with _errors() as console, contextlib.ExitStack() as held:
        if classifier is not None and (labels is not None or labels_file is not None or templates is not None):
            raise UsageError("--classifier already holds labels and templates: drop --labels/--labels-file/--templates")
        chosen = choose_format(fmt, str(output) if output else None, sys.stdout.isatty())
        stdin = sys.stdin.buffer if "-" in inputs else None
        paths = list(discover(inputs, stdin))
        if not any(os.path.exists(p) for p in paths):  # (Path.exists raises for a name too long, say)
            missing = [item for item in inputs if item != "-" and not Path(item).exists()]
            detail = f" ({', '.join(missing)}: no such file or folder)" if missing else ""
            raise UsageError(f"no images found in {', '.join(inputs)}{detail}")
        if chosen == "parquet" and output is None:
            raise UsageError("Parquet is written to a folder: give it with --output results.parquet")
        if output is not None:
            _check_output_place(output, folder=chosen == "parquet")
            if chosen == "parquet" and not resume and output.is_dir() and any(output.glob("part-*.parquet")):
                raise UsageError(
                    f"{output} holds the parts of an earlier run, which a new run would add to: carry it on with "
                    "--resume, or remove it or write another folder"
                )
            _refuse_overwriting(
                output,
                *_files_read(classifier, labels_file, templates, pretrained, model_config),
                *_among(paths, output, "one of the images to classify"),
            )
        holding = output is not None and chosen != "parquet" and held.enter_context(_held(output))
        done: dict[str, str | None] = {}
        if resume:
            if output is None:
                raise UsageError("--resume needs --output FILE: the results of the run to carry on")
            done, paths = _resumed(output, chosen, paths)
            if not quiet and output.exists():
                console.print(f"clipzs: resuming: {len(done)} already in {output}, {len(paths)} to go")
            if not paths:
                return
        appending = resume and output is not None and output.is_file() and output.stat().st_size > 0
        if engine not in ("local", "ray"):
            raise UsageError(f"unknown engine {engine!r}: use local or ray")
        if engine == "local" and workers is not None:
            raise UsageError("--workers sizes Ray's pool of actors: it needs --engine ray")
        if engine == "ray":  # what can be checked before the model loads and Ray starts
            from clipzs.device import check_precision_name
            from clipzs.ray_engine import check_actor_device, check_ray_address, require_ray

            require_ray()
            check_actor_device(device)
            check_ray_address(os.environ.get("RAY_ADDRESS"))
            check_precision_name(precision)  # the actors check it against their own devices
        # On Ray this process only encodes the prompts, wherever it can: --device and --precision are the actors'.
        here = (device, precision) if engine == "local" else ("cpu" if device == "cpu" else "auto", "auto")
        options = _ModelOptions(model, pretrained, model_config, *here)
        zsc = _classifier(options, classifier, labels, labels_file, templates, no_cache)
        if output is not None:  # (a classifier file names the weights it was built with)
            _refuse_overwriting(output, *_model_files(zsc))
        _warn_one_label(console, zsc)
        assert zsc.classifier is not None
        _check_same_labels(done, zsc, output)
        if output is not None and (appending or done):
            _check_same_classifier(output, zsc.classifier, zsc.model.fingerprint)
        skipped = _Skips(console)
        ranked = _csv_columns(output, appending and chosen == "csv", min(top_k, len(zsc.classifier.names)))
        ray_was_running = engine == "ray" and _ray_running()
        written = output if chosen != "parquet" else None  # (Parquet parts name themselves when they fail)
        try:
            predictions: Iterator[Prediction] | None = None
            if engine == "ray":  # Ray joined and the actors' device and precision checked before the output is opened
                parts = output if chosen == "parquet" else None  # written by Ray's tasks
                predictions = _on_ray(zsc, paths, top_k, batch_size, workers, device, precision, parts)
            with _open_output(written, append=appending, hold=not holding) as stream:
                writer = _writer(chosen, engine, output, stream, ranked, appending)
                if output is not None:
                    from clipzs.provenance import record

                    record(output, zsc.classifier, zsc.model.fingerprint)
                try:
                    with _progress(console, len(paths), quiet) as advance:
                        if predictions is None:
                            predictions = zsc.classify_paths(
                                paths, top_k=top_k, batch_size=batch_size, use_cache=not no_cache
                            )
                        for prediction in skipped.reported(predictions):
                            writer.write(prediction)
                            advance()
                finally:
                    writer.close()  # after the progress bar is gone (a table must not be drawn under it); on Ctrl-C
        except OSError as e:  # a full disk: a write to the stream names no file
            if written is None or e.filename is not None or e.errno not in NO_ROOM:
                raise
            raise UsageError(
                f"cannot write {written}: {e.strerror}; the lines written are kept: carry on with --resume once there "
                "is room"
            ) from None
        finally:
            if engine == "ray" and not ray_was_running:
                _stop_ray()  # on failure too
        if not quiet:
            console.print(
                f"clipzs: scored {len(paths) - skipped.count} of {len(paths)} images"
                + (f", skipped {skipped.count}" if skipped.count else "")
            )
        if skipped.count:
            raise typer.Exit(EXIT_SKIPPED)


def _resumed(output: Path, fmt: str, paths: list[Path]) -> tuple[dict[str, str | None], list[Path]]:
    """What an earlier run wrote to ``output`` (path -> label), and the paths it leaves to do."""
    from clipzs.output import written_paths

    if not output.exists():
        return {}, paths
    done = written_paths(output, fmt)
    return done, [p for p in paths if str(p) not in done]


def _csv_columns(output: Path | None, appending: bool, ranked: int) -> int:
    """The ranked labels a CSV row holds: those of the header already there when appending (a run of fewer
    labels leaves the columns left over empty), else as many as the run ranks (no empty columns)."""
    if not appending or output is None:
        return ranked
    from clipzs.output import csv_ranks

    before = csv_ranks(output)
    if before < ranked:
        raise UsageError(
            f"{output} holds {before} ranked labels a row and this run would write {ranked}: resume it with "
            f"--top-k {before}"
        )
    return before


def _writer(fmt: str, engine: str, output: Path | None, stream: IO[str], ranked: int, appending: bool) -> Writer:
    """The writer of the results: Parquet parts in the output folder (written by Ray's tasks on Ray), else the
    format's writer on the stream."""
    from clipzs.output import ParquetWriter, make_writer

    if fmt == "parquet" and engine == "ray":
        return _WrittenByRay()
    if fmt == "parquet" and output is not None:
        return ParquetWriter(output)
    return make_writer(fmt, stream, ranked, header=not appending)


def _ray_running() -> bool:
    """Whether this process is connected to Ray already (as a library user or a test may be)."""
    try:
        import ray
    except ImportError:  # said by the Ray engine itself, with what to install
        return False
    return bool(ray.is_initialized())


def _stop_ray() -> None:
    """Disconnect from the Ray this command connected to (and stop a local instance it started) while Ctrl-C is
    still the command's to handle: left to Ray's exit hook, the seconds it takes end in a traceback if interrupted.
    Nothing to do where Ray was never imported (not installed, or the command failed before)."""
    ray = sys.modules.get("ray")
    if ray is not None:
        ray.shutdown()


def _on_ray(
    zsc: ZeroShotClassifier,
    paths: list[Path],
    top_k: int,
    batch_size: int | None,
    workers: int | None,
    device: str,
    precision: str,
    parquet_folder: Path | None = None,
) -> Iterator[Prediction]:
    """Hand the classification to Ray Data: the classifier travels as a file, the model by name and weights.
    With ``parquet_folder``, Ray's tasks write the Parquet parts and the predictions carry only path and error.
    Ray is joined and the run checked now; the iterator returned runs it."""
    import tempfile

    from clipzs.ray_engine import classify_on_ray

    assert zsc.classifier is not None
    if zsc.model.pixels is None:
        raise UsageError(f"--engine ray needs the usual resize-and-crop preprocess; {zsc.model.name} differs")
    with tempfile.TemporaryDirectory() as tmp:
        classifier_file = Path(tmp, "classifier.clf")
        zsc.classifier.save(classifier_file)
        model = {
            "model": zsc.model.name,
            "pretrained": zsc.model.pretrained,
            "model_config": zsc.model.model_config,
            "precision": precision,  # as asked: each actor resolves auto for its own device
        }
        return classify_on_ray(
            paths,
            model=model,
            classifier_file=classifier_file,
            geometry=zsc.model.pixels.geometry,
            draft=zsc.model.draft,
            top_k=top_k,
            batch_size=batch_size,
            workers=workers,
            parquet_folder=parquet_folder,
            device=device,
        )


class _WrittenByRay:
    """The writer for Parquet on Ray: Ray's tasks have written the results already."""

    def write(self, prediction: Prediction) -> None:
        pass

    def close(self) -> None:
        pass


@app.command("build-classifier")
def build_classifier(
    output: Annotated[Path, typer.Option("--output", "-o", help="The classifier file to write.")],
    labels: LabelsOpt = None,
    labels_file: LabelsFileOpt = None,
    templates: TemplatesOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    model_config: ModelConfigOpt = None,
    device: DeviceOpt = "auto",
    no_cache: NoCacheOpt = False,
) -> None:
    """Encode the labels' prompts once into a classifier file for `classify --classifier`."""
    with _errors() as console:
        _check_output_place(output, folder=False)
        _refuse_overwriting(output, *_files_read(None, labels_file, templates, pretrained, model_config))
        zsc = _build(_ModelOptions(model, pretrained, model_config, device), labels, labels_file, templates, no_cache)
        assert zsc.classifier is not None
        zsc.classifier.save(output)
        meta = zsc.classifier.meta
        console.print(
            f"clipzs: wrote {output}: {len(zsc.classifier.labels)} labels, {len(meta['templates'])} templates, "
            f"model {meta['model']} ({meta['pretrained']})"
        )


@app.command("eval")
def evaluate(
    root: Annotated[
        Path,
        typer.Argument(
            help="A folder with one sub-folder per class, or a .csv / .jsonl of path,label.", metavar="DATASET"
        ),
    ],
    labels_file: Annotated[
        Optional[Path],
        typer.Option("--labels-file", help="Prompts per class, one 'class=alias|alias' per line (else the name)."),
    ] = None,
    templates: Annotated[
        Optional[str],
        typer.Option(
            "--templates",
            "-t",
            help="Template sets or files to compare, comma-separated.",
            show_default=DEFAULT_TEMPLATES,
        ),
    ] = None,
    model: Annotated[
        Optional[list[str]], typer.Option("--model", "-m", help="A model; repeat (with --pretrained) to compare.")
    ] = None,
    pretrained: Annotated[
        Optional[list[str]], typer.Option("--pretrained", "-p", help="Weights of each --model, in the same order.")
    ] = None,
    model_config: ModelConfigOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    plot: Annotated[
        Optional[Path], typer.Option("--plot", help="Write the best run's confusion matrix to this PNG file.")
    ] = None,
    classifier: Annotated[
        Optional[list[str]],
        typer.Option("--classifier", "-c", help="Also measure this classifier file (zero-shot, probe, blend)."),
    ] = None,
    shots: Annotated[
        Optional[str],
        typer.Option(
            "--shots", help="Few-shot curve: probes on K images per class, e.g. 1,2,4,8,16 (--plot draws it)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed for drawing the shots.")] = 0,
    no_cache: NoCacheOpt = False,
) -> None:
    """Measure zero-shot accuracy on labelled images: top-1, top-5, recall per class, confusion matrix."""
    from clipzs.api import ZeroShotClassifier
    from clipzs.classifier import Classifier
    from clipzs.evaluate import (
        best_run,
        check_plot_path,
        class_labels,
        evaluate_classifier,
        evaluate_model,
        load_dataset,
        plot_confusion,
        plot_few_shot,
    )
    from clipzs.output import render_eval
    from clipzs.prompts import class_prompts_from_file, load_templates

    with _errors() as console:
        if fmt not in ("table", "json"):
            raise UsageError(f"unknown format {fmt!r}: use table or json")
        if plot is not None:  # now, not after every image is encoded
            _check_output_place(plot, folder=False)
            check_plot_path(plot)
        dataset = load_dataset(root)
        labels = class_labels(dataset.classes, class_prompts_from_file(labels_file) if labels_file else ())
        template_sets = [
            t.strip() for t in (DEFAULT_TEMPLATES if templates is None else templates).split(",") if t.strip()
        ]
        files = [(file, Classifier.load(Path(file))) for file in classifier or []]  # a wrong path fails now
        if plot is not None:
            _refuse_overwriting(
                plot,
                *_files_read(None, labels_file, None, None, model_config),
                *(source for name in template_sets for source in _files_read(None, None, name, None, None)),
                *((Path(weights).expanduser(), "the model's weights") for weights in pretrained or []),
                *((Path(file), "a classifier file") for file in classifier or []),
                *_among(dataset.paths, plot, "one of the dataset's images"),
                option="--plot",
            )
        try:
            shot_counts = sorted({int(k) for k in shots.split(",") if k.strip()}) if shots else []
        except ValueError:
            raise UsageError(f"--shots takes whole numbers separated by commas, not {shots!r}") from None
        if any(k < 1 for k in shot_counts):
            raise UsageError("--shots counts must be at least 1")
        measures_model = not classifier or bool(model or pretrained)
        if templates is not None and not measures_model:
            console.print(
                "clipzs: warning: --templates is for zero-shot runs of a model (--model/--pretrained); a classifier "
                "file holds its own templates, so it is ignored here"
            )
        if shot_counts and not measures_model:
            raise UsageError("--shots fits probes on a model's features: name the model with --model/--pretrained")
        if measures_model and not template_sets and not shot_counts:
            raise UsageError("--templates names no template set")
        for name in template_sets:
            load_templates(name)  # a typo fails now, not after the images are encoded
        _check_precision(device, precision)
        runs: list[Run] = []
        skipped: list[tuple[Path, str]] = []
        pairs = _model_pairs(model, pretrained) if measures_model else []
        for model_name, weights in pairs:
            zsc = ZeroShotClassifier.from_pretrained(
                model_name, weights, model_config=model_config, device=device, precision=precision
            )
            found, skipped = evaluate_model(
                zsc, dataset, labels, template_sets, shots=shot_counts, seed=seed, use_cache=not no_cache
            )
            runs += found
        for file, held in files:
            # --model-config is the -m/-p runs' where there are any: a classifier file loads the model it records,
            # the config given standing in for a recorded one that no longer exists.
            recorded = held.meta.get("model_config")
            gone = isinstance(recorded, str) and bool(recorded) and not Path(recorded).is_file()
            zsc = ZeroShotClassifier.from_classifier_file(
                file,
                model_config=model_config if not measures_model or gone else None,
                device=device,
                precision=precision,
            )
            if plot is not None:  # (the file names the weights it was built with)
                _refuse_overwriting(plot, *_model_files(zsc), option="--plot")
            run, skipped = evaluate_classifier(zsc, dataset, _run_name(file, classifier or []), use_cache=not no_cache)
            runs.append(run)
        for path, reason in skipped:
            _report_skipped(console, str(path), reason)
        if not runs:
            raise UsageError("no run to report: every --shots count was left out, as warned above")
        render_eval(runs, dataset.classes, sys.stdout, fmt, skipped)
        if plot is not None and any(run.shots is not None for run in runs):
            plot_few_shot(runs, plot)
        elif plot is not None:
            if shot_counts:  # every count was left out: a curve would have no point
                console.print("clipzs: warning: no few-shot probe to draw; --plot shows a confusion matrix instead")
            plot_confusion(best_run(runs), dataset.classes, plot)
        if skipped:
            raise typer.Exit(EXIT_SKIPPED)


@app.command("sort")
def sort_images(
    src: Annotated[
        Optional[Path],
        typer.Argument(help="The folder (or image) to sort, or - to read paths from stdin.", metavar="SRC"),
    ] = None,
    dest: Annotated[
        Optional[Path], typer.Argument(help="Where DEST/<label>/ folders are made.", metavar="DEST")
    ] = None,
    labels: LabelsOpt = None,
    labels_file: LabelsFileOpt = None,
    classifier: Annotated[
        Optional[Path], typer.Option("--classifier", "-c", help="A classifier file instead of labels.")
    ] = None,
    templates: TemplatesOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    model_config: ModelConfigOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    mode: Annotated[str, typer.Option("--mode", help="copy, move or link (a symbolic link to the source).")] = "copy",
    min_score: Annotated[
        float, typer.Option("--min-score", help="Below this score an image goes to DEST/unsorted/.")
    ] = 0.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", metavar=FLAG, help="Print the plan as JSON Lines; touch nothing.")
    ] = False,
    manifest: Annotated[
        Optional[Path],
        typer.Option("--manifest", help="The record of every move, for --undo. [default: DEST/clipzs-manifest.jsonl]"),
    ] = None,
    undo_manifest: Annotated[
        Optional[Path], typer.Option("--undo", help="Undo the sort this manifest records, then stop.")
    ] = None,
    quiet: QuietOpt = False,
    no_cache: NoCacheOpt = False,
) -> None:
    """Put each image into DEST/<label>/; never overwrites, writes a manifest that --undo reverses."""
    from clipzs import sorting
    from clipzs.images import discover
    from clipzs.output import printable

    with _errors() as console:
        if undo_manifest is not None:
            counts: dict[str, int] = {}
            for step, outcome in sorting.undo(undo_manifest):
                counts[outcome] = counts.get(outcome, 0) + 1
                if outcome.startswith("left"):
                    console.print(f"clipzs: {printable(step.destination)}: {outcome}")
            if not quiet:
                console.print("clipzs: undo: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
            return
        if src is None or dest is None:
            raise UsageError("give SRC and DEST, or --undo MANIFEST")
        if mode not in sorting.MODES:
            raise UsageError(f"unknown mode {mode!r}: use one of {', '.join(sorting.MODES)}")
        if not 0 <= min_score <= 1:  # (nan too: no score is below it, nor above)
            raise UsageError(f"--min-score must be a number from 0 to 1, as scores are, not {min_score}")
        if dest.exists() and not dest.is_dir():
            raise UsageError(f"{dest} is a file: DEST is the folder the label folders go in")
        where = dest.resolve()
        if where == src.resolve():
            raise UsageError(f"{dest} is the folder being sorted: give DEST another folder (it may be inside SRC)")
        found = discover([str(src)], sys.stdin.buffer if str(src) == "-" else None)
        # (not what an earlier sort put there; os.path.exists, as Path.exists raises for a name too long, say)
        paths = [p for p in found if os.path.exists(p) and not sorting.inside(p, where)]
        paths = list(sorting.once_each(paths))  # a file listed twice is sorted once
        if not paths:
            raise UsageError(f"no images found in {src}")
        if classifier is None:  # the labels' folders now, before the model loads; a classifier file's once read
            sorting.refuse_shared_folders([label.name for label in _labels(labels, labels_file)], min_score)
        manifest = manifest or dest / "clipzs-manifest.jsonl"
        if not dry_run:
            sorting.prepare_manifest(manifest)  # now, not once the first images are classified
        options = _ModelOptions(model, pretrained, model_config, device, precision)
        zsc = _classifier(options, classifier, labels, labels_file, templates, no_cache)
        _warn_one_label(console, zsc)
        sorting.refuse_shared_folders(zsc.classifier.names if zsc.classifier else (), min_score)
        skipped = _Skips(console)
        steps = sorting.plan(skipped.reported(zsc.classify_paths(paths, use_cache=not no_cache)), dest, mode, min_score)
        done = steps if dry_run else sorting.apply(steps, manifest, failed=skipped.step_failed)
        count = 0
        for step in done:
            typer.echo(sorting.step_json(step))
            count += 1
        verb = "would sort" if dry_run else f"sorted ({mode})"
        if not quiet:
            console.print(f"clipzs: {verb} {count} of {len(paths)} images into {dest}")
        if skipped.count:
            raise typer.Exit(EXIT_SKIPPED)


probe_app = typer.Typer(
    help="Train classifiers on labelled images: linear probes, few-shot, zero-shot blends.", no_args_is_help=True
)
app.add_typer(probe_app, name="probe")


@probe_app.command("fit")
def probe_fit(
    root: Annotated[
        Path,
        typer.Argument(
            help="A folder with one sub-folder per class, or a .csv / .jsonl of path,label.", metavar="DATASET"
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The classifier file to write.")],
    shots: Annotated[
        Optional[int], typer.Option("--shots", min=1, help="Train on this many images per class (few-shot).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed for drawing shots and the held-out split.")] = 0,
    blend: Annotated[
        bool,
        typer.Option(
            "--blend", metavar=FLAG, help="Blend with the zero-shot classifier, the weight chosen on held-out images."
        ),
    ] = False,
    labels_file: Annotated[
        Optional[Path],
        typer.Option("--labels-file", help="Prompts per class for --blend: 'class=alias|alias' per line."),
    ] = None,
    templates: TemplatesOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    model_config: ModelConfigOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    no_cache: NoCacheOpt = False,
) -> None:
    """Fit an L2-regularised logistic regression on the images' features (strength chosen on held-out images)."""
    from clipzs.evaluate import class_labels, load_dataset
    from clipzs.probe import train_classifier
    from clipzs.prompts import class_prompts_from_file, load_templates

    with _errors() as console:
        _check_output_place(output, folder=False)  # now, not after minutes of training
        dataset = load_dataset(root)
        _refuse_overwriting(
            output,
            (root, "the dataset"),
            *_files_read(None, labels_file, templates, pretrained, model_config),
            *_among(dataset.paths, output, "one of the dataset's images"),
        )
        labels = class_labels(dataset.classes, class_prompts_from_file(labels_file) if labels_file else ())
        blend_templates = (DEFAULT_TEMPLATES if templates is None else templates) if blend else None
        if blend_templates is not None:
            load_templates(blend_templates)  # a typo fails now, not after the images are encoded and fitted
        elif templates is not None:
            console.print("clipzs: warning: --templates is for --blend's zero-shot part; without --blend it is ignored")
        zsc = _ModelOptions(model, pretrained, model_config, device, precision).load()
        if shots:
            counts = Counter(dataset.targets)
            short = [f"{dataset.classes[c]} ({n})" for c, n in sorted(counts.items()) if n < shots]
            if short:
                console.print(f"clipzs: fewer than {shots} images, all used: {', '.join(short)}")
        trained, result, skipped = train_classifier(
            zsc, dataset, labels, shots=shots, seed=seed, blend_templates=blend_templates, use_cache=not no_cache
        )
        for path, reason in skipped:
            _report_skipped(console, str(path), reason)
        trained.save(output)
        held = f", held-out accuracy {result.held_out_accuracy:.1%}" if result.held_out_accuracy is not None else ""
        mix = f", zero-shot weight {result.alpha}" if result.alpha is not None else ""
        console.print(
            f"clipzs: wrote {output}: {trained.meta['kind']} on {trained.meta['images']} images, "
            f"{len(labels)} classes, C={result.c:g}{mix}{held}"
        )
        if skipped:
            raise typer.Exit(EXIT_SKIPPED)


def _run_name(file: str, files: Iterable[str]) -> str:
    """How eval names a classifier file's run: by its file name, or by its path as given where another file of
    that name is measured beside it (exp1/probe.clf and exp2/probe.clf would read as the same run)."""
    name = Path(file).name
    return file if sum(Path(other).name == name for other in set(files)) > 1 else name


def _model_pairs(models: list[str] | None, weights: list[str] | None) -> list[tuple[str | None, str | None]]:
    """Pair each --model with its --pretrained (one of either is used for all)."""
    names: list[str | None] = list(models) if models else [None]
    tags: list[str | None] = list(weights) if weights else [None]
    if len(names) != len(tags) and 1 not in (len(names), len(tags)):
        raise UsageError(f"{len(names)} --model but {len(tags)} --pretrained: give one of each per model")
    count = max(len(names), len(tags))
    return list(zip(names * (count // len(names)), tags * (count // len(tags)), strict=True))


@app.command()
def templates(
    name: Annotated[Optional[str], typer.Argument(help="Print the templates of this set.")] = None,
) -> None:
    """List the built-in template sets, or print one."""
    from clipzs.prompts import builtin_template_sets, load_templates

    with _errors():
        if name is not None:
            for template in load_templates(name):
                typer.echo(template)
            return
        for set_name in builtin_template_sets():
            found = load_templates(set_name)
            default = "  (default)" if set_name == DEFAULT_TEMPLATES else ""
            counted = f"{len(found):>3} {'templates,' if len(found) > 1 else 'template, '}"  # (aligned)
            typer.echo(f"{set_name:<12} {counted} e.g. {found[0]!r}{default}")


@app.command()
def models(
    name: Annotated[Optional[str], typer.Argument(help="Only this model's pretrained tags.")] = None,
) -> None:
    """List open_clip models and their pretrained tags (model<TAB>tag)."""
    with _errors() as console:
        from clipzs.model import check_model_name, import_open_clip

        open_clip = import_open_clip()
        pairs = open_clip.list_pretrained()
        if name is not None:
            check_model_name(name)
            pairs = [(m, t) for m, t in pairs if m == name]
        for model_name, tag in pairs:
            default = "\t(default)" if (model_name, tag) == (DEFAULT_MODEL, DEFAULT_PRETRAINED) else ""
            typer.echo(f"{model_name}\t{tag}{default}")
        if name is not None and not pairs:  # (on stderr: stdout lists tags, of which there are none)
            console.print(f"clipzs: {name} has no pretrained tags: give its weights as a file with --pretrained PATH")


@app.command()
def serve(
    idle: Annotated[float, typer.Option("--idle", min=1, help="Stop after this many minutes without a command.")] = 30,
    models: Annotated[int, typer.Option("--models", min=1, help="How many models to keep loaded.")] = 2,
    detach: Annotated[
        bool, typer.Option("--detach", metavar=FLAG, help="Run in the background; return once it listens.")
    ] = False,
    stop: Annotated[bool, typer.Option("--stop", metavar=FLAG, help="Stop the running server.")] = False,
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="Load this model now instead of at the first command.")
    ] = None,
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", "-p", help="Its weights (as classify).")] = None,
    model_config: Annotated[Optional[Path], typer.Option("--model-config", help="Its config (as classify).")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Keep models loaded so that later commands skip the seconds of start-up (torch, model load).

    While it runs, classify, build-classifier, eval, probe and sort run in it, with the same results.
    """
    from clipzs import server

    with _errors() as console:
        if stop:
            console.print(f"clipzs: server {server.stop() or 'was not running'}")
            return
        preloaded = model is not None or pretrained is not None or model_config is not None
        if detach:
            options = ["--device", device, *(["-m", model] if model else [])]
            for flag, value in (("-p", pretrained), ("--model-config", model_config)):
                if value is not None:  # files by absolute path: the server runs in another folder
                    file = Path(value).expanduser()
                    options += [flag, str(file.resolve()) if file.is_file() else str(value)]
            _detach(console, idle, models, options)
            return
        try:
            server.serve(
                idle * 60, models, _ModelOptions(model, pretrained, model_config, device).load if preloaded else None
            )
        except (OSError, RuntimeError) as e:
            raise UsageError(str(e)) from e


def _detach(console: Console, idle: float, models: int, options: list[str]) -> None:
    """Start ``clipzs serve`` in its own session, logging to the cache directory, and wait until it listens."""
    import subprocess
    import time

    from clipzs import server
    from clipzs.cache import cache_dir

    if server.wait_until_listening(0):
        raise UsageError(f"a clipzs server is already listening on {server.socket_path()}")
    log_path = cache_dir() / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        start = log.tell()
        process = subprocess.Popen(
            [sys.executable, "-m", "clipzs", "serve", "--idle", str(idle), "--models", str(models), *options],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=log_path.parent,  # not the caller's folder, which may go away; commands bring their own
            env={**os.environ, CACHE_ENV: str(log_path.parent)},  # (a relative one would be found from there)
            start_new_session=True,  # not stopped by the terminal's Ctrl-C or hang-up
        )
    while process.poll() is None and not server.ready(2):
        time.sleep(0.05)  # (importing torch and loading a model first take a while; no socket until then)
    if process.poll() is not None:
        said = log_path.read_bytes()[start:].decode("utf-8", "replace").splitlines()
        errors = [line.removeprefix("clipzs: error: ") for line in said if line.startswith("clipzs: error: ")]
        why = errors[-1] if errors else f"it exited with status {process.returncode}"
        raise UsageError(f"the server did not start: {why} (log: {log_path})")
    console.print(f"clipzs: server {process.pid} ready on {server.socket_path()}; log: {log_path}")


@dataclass(frozen=True)
class _ModelOptions:
    """--model, --pretrained, --model-config, --device and --precision as a command was given them."""

    name: str | None
    pretrained: str | None
    config: Path | None
    device: str = "auto"
    precision: str = "auto"

    def load(self) -> ZeroShotClassifier:
        """The model the options name: a custom config names its own model; otherwise the defaults fill in."""
        from clipzs.api import ZeroShotClassifier

        _check_precision(self.device, self.precision)
        return ZeroShotClassifier.from_pretrained(
            self.name,
            self.pretrained,
            model_config=self.config,
            device=self.device,
            precision=self.precision,
        )

    def load_with(self, classifier: Path) -> ZeroShotClassifier:
        """A classifier file with the model it was built for (or the one the options name, which must match)."""
        from clipzs.api import ZeroShotClassifier

        _check_precision(self.device, self.precision)
        return ZeroShotClassifier.from_classifier_file(
            classifier,
            model=self.name,
            pretrained=self.pretrained,
            model_config=self.config,
            device=self.device,
            precision=self.precision,
        )


def _check_precision(device: str, precision: str) -> None:
    """A precision the device cannot run fails now, not after seconds of loading the model; one it runs slowly
    is worth a warning."""
    from clipzs import device as devices

    resolved = devices.resolve_device(device)
    bf16_here = devices.resolve_precision(resolved, precision) == "bf16" and resolved.type == "cpu"
    if bf16_here and devices.cpu_multiplies_bf16() is False:
        typer.echo(
            "clipzs: warning: this CPU has no bfloat16 arithmetic (AMX or AVX-512 BF16), so bf16 is likely slower "
            "than fp32 here",
            err=True,
        )


def _classifier(
    model: _ModelOptions,
    classifier: Path | None,
    labels: list[str] | None,
    labels_file: Path | None,
    templates: str | None,
    no_cache: bool,
) -> ZeroShotClassifier:
    """A classifier file with its model, or one built from labels and templates."""
    if classifier is None:
        return _build(model, labels, labels_file, templates, no_cache)
    return model.load_with(classifier)


def _build(
    model: _ModelOptions, labels: list[str] | None, labels_file: Path | None, templates: str | None, no_cache: bool
) -> ZeroShotClassifier:
    """Parse labels and templates first (cheap, likely to be mistyped), then load the model and build."""
    from clipzs.prompts import load_templates

    parsed = _labels(labels, labels_file)
    template_list = load_templates(DEFAULT_TEMPLATES if templates is None else templates)
    zsc = model.load()
    zsc.build(parsed, template_list, use_cache=not no_cache)
    return zsc


def _labels(labels: list[str] | None, labels_file: Path | None) -> tuple[Label, ...]:
    """The labels of every --labels given (-l cat -l dog is -l cat,dog), or of the --labels-file."""
    from clipzs.prompts import labels_from_file, labels_from_option

    if (labels is None) == (labels_file is None):
        raise UsageError("give the classes with exactly one of --labels 'cat,dog', --labels-file FILE or --classifier")
    return labels_from_option(*labels) if labels is not None else labels_from_file(labels_file)  # type: ignore[arg-type]


def _warn_one_label(console: Console, zsc: ZeroShotClassifier) -> None:
    """A softmax over one label scores every image 1.0: almost certainly not what was meant."""
    import shlex

    from clipzs.prompts import labels_option_item

    if zsc.classifier is not None and len(zsc.classifier.names) == 1 and zsc.scores_sum_to_one:
        labels = shlex.quote(f"{labels_option_item(zsc.classifier.names[0])},something else")
        console.print(
            f"clipzs: warning: one label, so every image scores 1.0 (scores are shared out among the labels); "
            f"name the alternatives too, e.g. -l {labels}"
        )


class _Skips:
    """Each input that could not be read, said as its prediction passes by, and counted."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.count = 0

    def reported(self, predictions: Iterable[Prediction]) -> Iterator[Prediction]:
        for prediction in predictions:
            if prediction.error is not None:
                self.count += 1
                _report_skipped(self.console, prediction.path, prediction.error)
            yield prediction

    def step_failed(self, step: Step, error: OSError) -> None:
        """A sort step that could not be carried out (its source deleted meanwhile), skipped as an unreadable
        image is, so the other images are still sorted."""
        self.count += 1
        _report_skipped(self.console, step.source, error.strerror or str(error))


def _report_skipped(console: Console, path: str, reason: str) -> None:
    """The one-line warning for an input that could not be read (its record says so too)."""
    from clipzs.output import shortened

    console.print(f"clipzs: skipped {shortened(path)}: {reason}")


@contextlib.contextmanager
def _errors() -> Iterator[Console]:
    """Turn clipzs errors into one line on stderr and their exit status, and the library's warnings into one
    line each; a closed pipe ends quietly."""
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True, markup=False, highlight=False, emoji=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", ClipzsWarning)
            show_others = warnings.showwarning

            def show(
                message: Warning | str,
                category: type[Warning],
                filename: str,
                lineno: int,
                file: TextIO | None = None,
                line: str | None = None,
            ) -> None:
                if issubclass(category, ClipzsWarning):
                    console.print(f"clipzs: warning: {message}")
                else:
                    show_others(message, category, filename, lineno, file, line)

            warnings.showwarning = show
            yield console
    except ClipzsError as e:
        console.print(f"clipzs: error: {e}")
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        console.print("clipzs: interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except ImportError as e:  # a broken install (torch itself, say): the user can repair it
        console.print(f"clipzs: error: {e}: reinstall clipzs and its dependencies (pip install --force-reinstall ...)")
        raise typer.Exit(EXIT_USAGE) from None
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as `yes | head` does
        from clipzs.output import silence

        silence(sys.stdout)
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    except OSError as e:  # a file or folder the command was given or had to write: name it, with the system's reason
        console.print(f"clipzs: error: {_os_reason(e)}")
        raise typer.Exit(EXIT_USAGE) from None


def _check_same_classifier(output: Path, classifier: Classifier, model: str) -> None:
    """Refuse to resume an output that another classifier wrote (another model, other weights, templates or
    labels), as its record in the cache says: one file would mix the answers of two classifiers."""
    from clipzs.provenance import describe, differences, identity, recorded

    earlier = recorded(output)
    changed = differences(earlier["identity"], identity(classifier, model)) if earlier else []
    if earlier and changed:
        raise UsageError(
            f"{output} was written with {' and '.join(changed)} than this run's ({earlier['described']}, against "
            f"{describe(classifier)}): resume it with what it was written with, or write another file"
        )


def _check_same_labels(done: dict[str, str | None], zsc: ZeroShotClassifier, output: Path | None) -> None:
    """Refuse to resume an output whose images were labelled otherwise: one file would mix two classifications."""
    names = set(zsc.classifier.names) if zsc.classifier else set()
    other = sorted({label for label in done.values() if label is not None} - names)
    if other:
        from clipzs.output import some_of

        shown = some_of([repr(label) for label in other], 5)
        raise UsageError(
            f"{output} holds images labelled {shown}, which this run cannot give: resume it with the labels or "
            "classifier it was made with, or write another file"
        )


def _os_reason(error: OSError) -> str:
    """'PATH: reason', as other command-line tools say it."""
    from clipzs.output import shortened

    reason = error.strerror or str(error)
    names = [n for n in (error.filename, error.filename2) if n is not None]
    shown = " -> ".join(shortened(os.fsdecode(n) if isinstance(n, (str, bytes)) else str(n)) for n in names)
    return f"{shown}: {reason}" if names else reason


def _files_read(
    classifier: Path | None,
    labels_file: Path | None,
    templates: str | None,
    pretrained: str | None,
    model_config: Path | None,
) -> list[tuple[Path | str | None, str]]:
    """The files besides images that a command's options make it read, each named as a refusal says it."""
    from clipzs.prompts import builtin_template_sets

    return [
        (classifier, "the classifier file"),
        (labels_file, "the labels file"),
        (None if templates in builtin_template_sets() else templates, "the templates file"),
        (Path(pretrained).expanduser() if pretrained else None, "the model's weights"),
        (model_config, "the model config"),
    ]


def _model_files(zsc: ZeroShotClassifier) -> list[tuple[Path | str | None, str]]:
    """The files the loaded model was read from (a classifier file names them without -p)."""
    return [(zsc.model.pretrained, "the model's weights"), (zsc.model.model_config, "the model config")]


def _among(paths: Iterable[Path], output: Path, what: str) -> list[tuple[Path | str | None, str]]:
    """The inputs that may be the output file (only those of its name are asked the file system)."""
    return [(path, what) for path in paths if path.name == output.name]


def _refuse_overwriting(output: Path, *sources: tuple[Path | str | None, str], option: str = "--output") -> None:
    """Refuse an --output (or another ``option``'s file) that is a file the command reads: it would be emptied
    before it is read, or lost."""
    if not output.exists():
        return
    for source, what in sources:
        with contextlib.suppress(OSError):
            if source is not None and os.path.samefile(source, output):
                raise UsageError(f"{option} {output} is {what}: writing it would destroy it; give another file")


def _check_output_place(output: Path, folder: bool) -> None:
    """Refuse an --output that cannot be written before the model loads, not after. A file needs its folder to
    exist; a folder (Parquet's) is made with the folders above it."""
    if folder:
        from clipzs.output import check_parquet_folder

        check_parquet_folder(output)
        return
    if not output.parent.is_dir():
        raise UsageError(f"cannot write {output}: {output.parent} is not an existing folder")
    if output.is_dir():
        raise UsageError(f"cannot write {output}: it is a folder")
    if not os.access(output.parent, os.W_OK):  # (a read-only folder or file system)
        raise UsageError(f"cannot write {output}: {output.parent} is not writable")


@contextlib.contextmanager
def _open_output(output: Path | None, append: bool = False, hold: bool = True) -> Iterator[IO[str]]:
    """The output file, opened to append or emptied; with ``hold``, a regular file is held against other commands
    first (see ``_held``), so that one refused empties nothing."""
    if output is None:
        yield sys.stdout
        return
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else 0), 0o666)
    except OSError as e:
        raise UsageError(f"cannot write {output}: {e.strerror}") from e
    with os.fdopen(fd, "a" if append else "w", encoding="utf-8", newline="") as stream:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # (not /dev/null, say: every command may write it at once)
            if hold:
                _hold(fd, output)
            if not append:
                os.ftruncate(fd, 0)
        yield stream


@contextlib.contextmanager
def _held(output: Path) -> Iterator[bool]:
    """Hold an existing output file for the whole command, before --resume reads it (and cuts a torn line);
    whether it is held (a file not there yet is held once it is made, by ``_open_output``)."""
    try:
        fd = os.open(output, os.O_RDONLY | os.O_NONBLOCK) if output.is_file() else None
    except OSError:  # (one that cannot be read: said when it is written)
        fd = None
    if fd is None:
        yield False
        return
    try:
        _hold(fd, output)
        yield True
    finally:
        os.close(fd)


def _hold(fd: int, output: Path) -> None:
    """Lock an output file against other commands that would write it at the same time: two runs resuming one
    file each appended every image left, and one could cut off the line that the other was writing."""
    try:
        import fcntl
    except ImportError:  # Windows: not guarded
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UsageError(
            f"{output} is being written by another command: let it finish, or write another file"
        ) from None
    except OSError:  # a file system without locks: not guarded
        pass


@contextlib.contextmanager
def _progress(console: Console, total: int, quiet: bool) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr, shown only when stderr is a terminal and not --quiet."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    disabled = quiet or not console.is_terminal
    with Progress(
        TextColumn("classifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=disabled,
    ) as progress:
        task = progress.add_task("classify", total=total)
        yield lambda: progress.advance(task)


def _exit_broken_pipe(console: Console) -> None:
    """The reader went away (| head): stop quietly with a broken pipe's status, as the commands' own output does,
    where rich would exit 1, as if clipzs had failed."""
    from clipzs.output import silence

    silence(sys.stdout)
    raise SystemExit(EXIT_BROKEN_PIPE)


def main() -> None:
    """Entry point of the `clipzs` command: run on the resident server when one listens, else here."""
    from clipzs.server import forward

    code = forward(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from rich.console import Console

    Console.on_broken_pipe = _exit_broken_pipe  # type: ignore[method-assign,assignment] # (Typer's help is printed by rich)
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C before a command's own handling (_errors) begins: while Typer starts up
        print("clipzs: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except OSError as e:  # help written to a full disk, say
        print(f"clipzs: error: cannot write the output: {e.strerror or e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
