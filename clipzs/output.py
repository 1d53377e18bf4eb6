"""Writers for predictions: JSON Lines, CSV, and a rich table for people. No torch, no model."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from clipzs.errors import UsageError
from clipzs.prediction import SCORE_DIGITS, Prediction

if TYPE_CHECKING:
    from rich.console import Console

    from clipzs.evaluate import Run

FORMATS = ("jsonl", "csv", "table", "parquet")
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
PARQUET_PART_ROWS = 1000


class Writer(Protocol):
    def write(self, prediction: Prediction) -> None: ...
    def close(self) -> None: ...


def choose_format(requested: str | None, output_name: str | None, stdout_is_terminal: bool) -> str:
    """--format when given; else by the output file's suffix; else a table on a terminal, JSON Lines in a pipe."""
    if requested:
        if requested not in FORMATS:
            raise UsageError(f"unknown format {requested!r}: use one of {', '.join(FORMATS)}")
        return requested
    if output_name:
        suffix = output_name[output_name.rfind(".") :].lower() if "." in output_name else ""
        return SUFFIX_FORMATS.get(suffix, "jsonl")
    return "table" if stdout_is_terminal else "jsonl"


def make_writer(fmt: str, stream: IO[str], top_k: int, header: bool = True) -> Writer:
    """A writer of the format; ``header=False`` when appending to an output that already has one."""
    if fmt == "parquet":
        raise UsageError("Parquet is written to a folder: give it with --output results.parquet")
    if fmt == "jsonl":
        return JsonlWriter(stream)
    if fmt == "csv":
        return CsvWriter(stream, top_k, header)
    return TableWriter(stream)


def written_paths(path: Path, fmt: str) -> set[str]:
    """The paths an earlier run wrote to this JSON Lines, CSV or Parquet output, for --resume.

    A run killed mid-write may leave its last line cut short: the file is truncated to its last whole line
    first, so that the lines appended next are whole too.
    """
    if fmt == "parquet":
        return ParquetWriter.written_paths(path)
    if fmt not in ("jsonl", "csv"):
        raise UsageError("--resume works with JSON Lines, CSV and Parquet output")
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(whole))
    text = whole.decode("utf-8", errors="replace")
    if fmt == "csv":
        return {row["path"] for row in csv.DictReader(io.StringIO(text, newline="")) if row.get("path")}
    done = set()
    for line in text.splitlines():
        try:
            done.add(json.loads(line)["path"])
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{path} is not a clipzs JSON Lines output: cannot resume it") from None
    return done


class JsonlWriter:
    """One JSON object per line, flushed as it goes so a pipe sees results while the run goes on."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, prediction: Prediction) -> None:
        self.stream.write(json.dumps(prediction.to_dict(), ensure_ascii=False) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class ParquetWriter:
    """Parquet, as a folder of part files (``results.parquet/part-00000.parquet``, ...) that pyarrow, pandas,
    DuckDB and Spark read as one table. Each part is written whole and renamed into place, so a run stopped
    at any moment leaves a valid dataset; the rows of an unfinished part are the ones a --resume redoes."""

    def __init__(self, folder: Path, rows_per_part: int = PARQUET_PART_ROWS) -> None:
        self.folder = folder
        self.rows_per_part = rows_per_part
        self.records: list[dict[str, Any]] = []
        self.next_part = open_parquet_folder(folder)

    def write(self, prediction: Prediction) -> None:
        self.records.append(prediction.to_dict())
        if len(self.records) >= self.rows_per_part:
            self._flush()

    def close(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self.records:
            return
        write_parquet_part(self.folder / f"part-{self.next_part:05d}.parquet", self.records)
        self.next_part += 1
        self.records = []

    @staticmethod
    def written_paths(folder: Path) -> set[str]:
        import pyarrow.parquet as pq

        parts = sorted(folder.glob("part-*.parquet"))
        return {path for part in parts for path in pq.read_table(part, columns=["path"]).column("path").to_pylist()}


def open_parquet_folder(folder: Path) -> int:
    """Check that Parquet can be written to ``folder`` and make it; the number of parts already there."""
    try:
        import pyarrow  # noqa: F401
    except ImportError as e:
        raise UsageError("Parquet output needs pyarrow: pip install 'clipzs[parquet]'") from e
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} exists and is not a folder: Parquet output is a folder of parts")
    folder.mkdir(parents=True, exist_ok=True)
    return len(list(folder.glob("part-*.parquet")))


def write_parquet_part(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Write JSON Lines records (``Prediction.to_dict``) as one Parquet part, whole, renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipzs.cache import atomic_write

    entry = pa.struct([("label", pa.string()), ("score", pa.float64())])
    schema = pa.schema(
        [
            ("path", pa.string()),
            ("label", pa.string()),
            ("score", pa.float64()),
            ("error", pa.string()),
            ("top_k", pa.list_(entry)),
        ]
    )
    columns = ("path", "label", "score", "error")
    rows = [{**{c: r.get(c) for c in columns}, "top_k": r.get("top_k", [])} for r in records]
    table = pa.Table.from_pylist(rows, schema=schema)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


class CsvWriter:
    """Columns path, label, score, error, then label_1, score_1 ... label_k, score_k."""

    def __init__(self, stream: IO[str], top_k: int, header: bool = True) -> None:
        self.stream = stream
        self.top_k = top_k
        self.csv = csv.writer(stream)
        ranks = [f"{name}_{i}" for i in range(1, top_k + 1) for name in ("label", "score")]
        if header:
            self.csv.writerow(["path", "label", "score", "error", *ranks])

    def write(self, prediction: Prediction) -> None:
        record = prediction.to_dict()
        ranks: list[object] = []
        for entry in record.get("top_k", [])[: self.top_k]:
            ranks += [entry["label"], _fixed(entry["score"])]
        ranks += [""] * (2 * self.top_k - len(ranks))
        self.csv.writerow(
            [record["path"], record.get("label", ""), _fixed(record.get("score")), record.get("error", ""), *ranks]
        )
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class TableWriter:
    """A rich table for a terminal, printed when the run ends; control characters in names are escaped."""

    def __init__(self, stream: IO[str]) -> None:
        from rich.table import Table

        self.console = results_console(stream)
        self.table = Table("path", "label", "score", "runner-up", box=None, header_style="bold")

    def write(self, prediction: Prediction) -> None:
        from rich.text import Text

        path = Text(printable(prediction.path))
        if prediction.error is not None:
            self.table.add_row(path, Text("error", style="red"), "", Text(prediction.error, style="red"))
            return
        runner_up = prediction.top_k[1] if len(prediction.top_k) > 1 else None
        self.table.add_row(
            path,
            Text(prediction.label or "", style="bold"),
            f"{prediction.score:.{SCORE_DIGITS - 3}f}",
            Text(f"{runner_up[0]} {runner_up[1]:.3f}" if runner_up else ""),
        )

    def close(self) -> None:
        self.console.print(self.table)


def render_eval(runs: Sequence[Run], classes: Sequence[str], stream: IO[str], fmt: str) -> None:
    """Evaluation results: JSON with every figure, or tables (the runs; recall per class and, for up to 15
    classes, the confusion matrix of the best run)."""
    if fmt == "json":
        json.dump({"classes": list(classes), "runs": [run.to_dict(classes) for run in runs]}, stream, indent=2)
        stream.write("\n")
        return
    from rich.table import Table

    wide = None if stream.isatty() else 1_000  # in a file or a pipe, nothing is cut to fit 80 columns
    console = results_console(stream, width=wide)
    summary = Table("model", "pretrained", "templates", "images", "top-1", "top-5", "mean recall", box=None)
    for run in runs:
        m = run.metrics
        summary.add_row(
            run.model,
            run.pretrained,
            run.templates,
            str(run.images),
            f"{m.top1:.1%}",
            f"{m.top5:.1%}",
            f"{m.mean_per_class_recall:.1%}",
        )
    console.print(summary)
    best = max(runs, key=lambda run: run.metrics.top1)
    # Titles as lines of their own: a table's title wraps at the (narrow) table's width.
    console.print(f"\nrecall per class, best run: {best.model} ({best.pretrained}), {best.templates}", soft_wrap=True)
    per_class = Table("class", "recall", "images", box=None)
    for name, recall, support in zip(classes, best.metrics.per_class_recall, best.metrics.support, strict=True):
        per_class.add_row(name, f"{recall:.1%}", str(support))
    console.print(per_class)
    if len(classes) <= 15:
        console.print("\nconfusion matrix (rows: true class)", soft_wrap=True)
        confusion = Table("true \\ predicted", *classes, box=None)
        for name, row in zip(classes, best.metrics.confusion, strict=True):
            confusion.add_row(name, *(str(count) for count in row))
        console.print(confusion)


def _fixed(score: float | None) -> str:
    """A score in fixed notation (0.000010, not 1e-05), as spreadsheets and people read it."""
    return "" if score is None else f"{score:.{SCORE_DIGITS}f}"


def results_console(stream: IO[str], width: int | None = None) -> Console:
    """A rich console for results on ``stream``. When the reader has gone (``| head``), it raises
    BrokenPipeError like the other writers, where rich's own would exit with status 1 by itself."""
    from rich.console import Console

    class ResultsConsole(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError

    return ResultsConsole(file=stream, highlight=False, width=width)


def silence(stream: IO[str]) -> None:
    """Point a stream whose reader went away (``| head``) at /dev/null, so that exiting does not complain."""
    with contextlib.suppress(OSError, ValueError):  # (a stream with no file, as a clipzs server's are)
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


def printable(text: str) -> str:
    """Escape control characters (a newline in a file name, say) so one record stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
