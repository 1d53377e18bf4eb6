"""Writers for predictions: JSON Lines, CSV, and a rich table for people. No torch, no model."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
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
JSONL_START = b'{"path": '
"""How every line clipzs writes to JSON Lines starts."""
UTF8_BOM = b"\xef\xbb\xbf"
"""What some editors (Notepad) put at the start of a UTF-8 file they save."""
CSV_COLUMNS = ("path", "label", "score", "error")
"""The first columns of clipzs's CSV, before the ranked labels."""


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
    """A writer of a stream's format (Parquet is a folder: ``ParquetWriter``); ``header=False`` when appending to
    an output that already has one."""
    if fmt == "jsonl":
        return JsonlWriter(stream)
    if fmt == "csv":
        return CsvWriter(stream, top_k, header)
    return TableWriter(stream)


def written_paths(path: Path, fmt: str) -> dict[str, str | None]:
    """The paths an earlier run wrote to this JSON Lines, CSV or Parquet output, for --resume, with the label
    each got (None for an image it could not read).

    Only clipzs's own output is resumed: any other file is refused and left as it is; what an editor does to
    a file it saves again (blank lines, Windows line ends, a UTF-8 byte order mark) is not held against it. A
    run killed mid-write may leave its last line cut short: once the file is known to be clipzs's, that line is
    cut off, so that the lines appended next are whole too.
    """
    if fmt == "parquet":
        return ParquetWriter.written_paths(path)
    if fmt not in ("jsonl", "csv"):
        raise UsageError("--resume works with JSON Lines, CSV and Parquet output")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from e
    mark = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    whole = data[: data.rfind(b"\n") + 1]
    try:
        done = (jsonl_paths if fmt == "jsonl" else csv_paths)(whole[mark:], data[max(len(whole), mark) :])
    except (ValueError, RecursionError, csv.Error):  # (RecursionError: JSON nested too deep to parse)
        kind = "JSON Lines" if fmt == "jsonl" else "CSV"
        raise UsageError(f"{path} is not a clipzs {kind} output: cannot resume it") from None
    keep = len(whole) if whole[mark:].strip() else 0  # (nothing but a mark and blank lines: a CSV needs its header)
    if keep != len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
    return done


def jsonl_paths(whole: bytes, torn: bytes) -> dict[str, str | None]:
    """The paths in clipzs JSON Lines: the ``whole`` lines, then ``torn``, the start of one that a killed run
    cut short. ValueError when they are not that."""
    records = [json.loads(line.decode("utf-8")) for line in whole.splitlines() if line.strip()]
    if not all(map(_is_record, records)) or not _starts_as(torn, JSONL_START):
        raise ValueError("not clipzs JSON Lines")
    return {record["path"]: record.get("label") for record in records}


def csv_paths(whole: bytes, torn: bytes) -> dict[str, str | None]:
    """The paths in a clipzs CSV: the ``whole`` lines, then ``torn``, the start of one that a killed run cut
    short. ValueError when they are not that: the first line must be clipzs's header."""
    rows = [row for row in csv.reader(io.StringIO(whole.decode("utf-8"), newline="")) if row]  # (blank lines)
    if not rows:  # not even the header is whole
        if not _starts_as(torn, ",".join(CSV_COLUMNS).encode()):
            raise ValueError("not a clipzs CSV")
        return {}
    if rows[0] != csv_header((len(rows[0]) - len(CSV_COLUMNS)) // 2):
        raise ValueError("not a clipzs CSV header")
    if any(len(row) != len(rows[0]) for row in rows[1:]):  # (cut inside a quoted name, say: not to append to)
        raise ValueError("a row of another length than the header")
    return {unescape_surrogates(row[0]): unescape_surrogates(row[1]) or None for row in rows[1:]}


def csv_ranks(path: Path) -> int:
    """How many ranked labels a row of this clipzs CSV holds, by its header (its first line that is not blank)."""
    with open(path, newline="", encoding="utf-8") as f:
        header = next((row for row in csv.reader(f) if row), [])
    return (len(header) - len(CSV_COLUMNS)) // 2


def csv_header(top_k: int) -> list[str]:
    """path, label, score, error, then label_1, score_1 ... label_k, score_k."""
    return [*CSV_COLUMNS, *(f"{name}_{i}" for i in range(1, top_k + 1) for name in ("label", "score"))]


def _is_record(record: object) -> bool:
    """Whether a parsed JSON line is one that clipzs writes (``Prediction.to_dict``): a path, and a label or an
    error, all text."""
    if not isinstance(record, dict) or not isinstance(record.get("path"), str):
        return False
    if "error" in record:
        return isinstance(record["error"], str)
    return {"label", "score", "top_k"} <= record.keys() and isinstance(record["label"], str)


def _starts_as(torn: bytes, start: bytes) -> bool:
    """Whether ``torn`` could be what a killed run left of a line that begins with ``start``."""
    return torn[: len(start)] == start[: len(torn)]


def escape_surrogates(text: str) -> str:
    """``text`` with each lone surrogate written as its escape (``\\udcff``), so that it is valid UTF-8.

    A file name whose bytes are not UTF-8 reaches Python with each byte that does not decode as a lone
    surrogate (os.fsdecode: byte 0xff is '\\udcff'), and UTF-8 cannot encode those. In JSON Lines the escape is
    JSON's own, so that json.loads gives back the very same str, and os.fsencode the file's bytes. CSV and
    Parquet have no escapes: there the same six characters stand for the byte, one text for the name in every
    format, and a backslash escape that marks it clearly (rather than U+FFFD, which would lose the byte).
    ``unescape_surrogates`` reads it back for --resume; a name that really spells a backslash-u surrogate
    escape is then read back as the byte, and classified again: a duplicate row at worst, never a lost one.
    """
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def json_text(record: dict[str, Any]) -> str:
    """A record as one line of JSON, valid UTF-8 even for a file name that is not (``escape_surrogates``)."""
    return escape_surrogates(json.dumps(record, ensure_ascii=False))


_SURROGATE_ESCAPE = re.compile(r"\\u(d[89a-f][0-9a-f]{2})")


def unescape_surrogates(text: str) -> str:
    """The inverse of ``escape_surrogates``, for a name read back from CSV or Parquet."""
    return _SURROGATE_ESCAPE.sub(lambda m: chr(int(m[1], 16)), text)


class JsonlWriter:
    """One JSON object per line, flushed as it goes so a pipe sees results while the run goes on."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, prediction: Prediction) -> None:
        self.stream.write(json_text(prediction.to_dict()) + "\n")
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
    def written_paths(folder: Path) -> dict[str, str | None]:
        """The paths in the parts already in ``folder``, with their labels; a part that is not a readable clipzs
        part is refused."""
        check_parquet_folder(folder)
        import pyarrow as pa
        import pyarrow.parquet as pq

        done: dict[str, str | None] = {}
        for part in sorted(folder.glob("part-*.parquet")):
            try:
                table = pq.read_table(part, columns=["path", "label"])
                paths, labels = table.column("path"), table.column("label")
                if paths.type != pa.string() or paths.null_count or labels.type != pa.string():
                    raise ValueError("not a clipzs part")
            except (ValueError, KeyError, OSError, pa.ArrowException):
                raise UsageError(f"{part} is not a readable clipzs Parquet part: cannot resume {folder}") from None
            for path, label in zip(paths.to_pylist(), labels.to_pylist(), strict=True):
                done[unescape_surrogates(path)] = None if label is None else unescape_surrogates(label)
        return done


def open_parquet_folder(folder: Path) -> int:
    """Check that Parquet can be written to ``folder`` and make it; the number the next part (or Ray run) takes.

    That is the number of parts there, but at least one past the highest number in their names: a part moved
    away leaves a gap, and the count alone would then name a new part as one already there, and write over it."""
    check_parquet_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = list(folder.glob("part-*.parquet"))
    numbers = [int(m[1]) for part in parts if (m := re.match(r"part-(\d+)", part.name))]
    return max([len(parts), *(number + 1 for number in numbers)])


def check_parquet_folder(folder: Path) -> None:
    """Parquet output needs pyarrow, and a folder (or nothing yet) at ``folder``."""
    try:
        import pyarrow  # noqa: F401
    except ImportError as e:
        raise UsageError("Parquet output needs pyarrow: pip install pyarrow") from e
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"cannot write Parquet to {folder}: it is a file, and Parquet is written to a folder of parts")


def write_parquet_part(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Write JSON Lines records (``Prediction.to_dict``) as one Parquet part, whole, renamed into place; strings
    with ``escape_surrogates``."""
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

    def text(value: str | None) -> str | None:
        return None if value is None else escape_surrogates(value)

    rows = [
        {
            "path": text(r["path"]),
            "label": text(r.get("label")),
            "score": r.get("score"),
            "error": text(r.get("error")),
            "top_k": [{**entry, "label": text(entry["label"])} for entry in r.get("top_k", [])],
        }
        for r in records
    ]
    table = pa.Table.from_pylist(rows, schema=schema)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


class CsvWriter:
    """Columns path, label, score, error, then label_1, score_1 ... label_k, score_k; text with
    ``escape_surrogates``."""

    def __init__(self, stream: IO[str], top_k: int, header: bool = True) -> None:
        self.stream = stream
        self.top_k = top_k
        self.csv = csv.writer(stream)
        if header:
            self.csv.writerow(csv_header(top_k))

    def write(self, prediction: Prediction) -> None:
        record = prediction.to_dict()
        ranks: list[str] = []
        for entry in record.get("top_k", [])[: self.top_k]:
            ranks += [entry["label"], _fixed(entry["score"])]
        ranks += [""] * (2 * self.top_k - len(ranks))
        row = [record["path"], record.get("label", ""), _fixed(record.get("score")), record.get("error", ""), *ranks]
        self.csv.writerow(map(escape_surrogates, row))
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


def render_eval(
    runs: Sequence[Run], classes: Sequence[str], stream: IO[str], fmt: str, skipped: Sequence[tuple[Path, str]] = ()
) -> None:
    """Evaluation results: JSON with every figure and the images ``skipped`` (unreadable: in no figure), or
    tables (the runs; recall per class and, for up to 15 classes, the confusion matrix of the best run)."""
    if fmt == "json":
        report = {
            "classes": list(classes),
            "runs": [run.to_dict(classes) for run in runs],
            "skipped": [{"path": str(path), "error": why} for path, why in skipped],
        }
        json.dump(report, stream, indent=2)
        stream.write("\n")
        return
    from rich.table import Table

    from clipzs.evaluate import best_run

    wide = None if stream.isatty() else 1_000  # in a file or a pipe, nothing is cut to fit 80 columns
    console = results_console(stream, width=wide, markup=False)  # a class named 'old [/old]' is text
    classes = [printable(name) for name in classes]  # a folder name's newline would split its row in two
    summary = Table("model", "pretrained", "templates", "images", "top-1", "top-5", "mean recall", box=None)
    for run in runs:
        m = run.metrics
        summary.add_row(
            run.model,
            printable(run.pretrained),
            printable(run.templates),
            str(run.images),
            f"{m.top1:.1%}",
            f"{m.top5:.1%}",
            f"{m.mean_per_class_recall:.1%}",
        )
    console.print(summary)
    best = best_run(runs)
    # Titles as lines of their own: a table's title wraps at the (narrow) table's width.
    console.print(
        f"\nrecall per class, best run: {best.model} ({printable(best.pretrained)}), {printable(best.templates)}",
        soft_wrap=True,
    )
    per_class = Table("class", "recall", "images", box=None)
    for name, recall, support in zip(classes, best.metrics.per_class_recall, best.metrics.support, strict=True):
        per_class.add_row(name, "-" if recall is None else f"{recall:.1%}", str(support))
    console.print(per_class)
    if len(classes) <= 15:
        console.print("\nconfusion matrix (rows: true class)", soft_wrap=True)
        other = any(best.metrics.other)  # images predicted as a classifier's labels that are no class
        confusion = Table("true \\ predicted", *classes, *(["(other labels)"] if other else []), box=None)
        for name, row, outside in zip(classes, best.metrics.confusion, best.metrics.other, strict=True):
            confusion.add_row(name, *(str(count) for count in row), *([str(outside)] if other else []))
        console.print(confusion)
    else:
        console.print(
            f"\nconfusion matrix: {len(classes)} classes are too many for a table; --format json or --plot FILE "
            "give it",
            soft_wrap=True,
        )


def _fixed(score: float | None) -> str:
    """A score in fixed notation (0.000010, not 1e-05), as spreadsheets and people read it."""
    return "" if score is None else f"{score:.{SCORE_DIGITS}f}"


def results_console(stream: IO[str], width: int | None = None, markup: bool = True) -> Console:
    """A rich console for results on ``stream``. When the reader has gone (``| head``), it raises
    BrokenPipeError like the other writers, where rich's own would exit with status 1 by itself. Without
    ``markup``, text in brackets is printed as it is."""
    from rich.console import Console

    class ResultsConsole(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError

    return ResultsConsole(file=stream, highlight=False, width=width, markup=markup, emoji=False)


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


MAX_SHOWN = 200
"""The most characters of a path that a one-line message shows (``shortened``)."""


def shortened(text: str, limit: int = MAX_SHOWN) -> str:
    """``printable`` text cut in its middle to ``limit`` characters, for one-line messages: both the start of a
    path and its file name stay. A line of binary data read as a path made a message of kilobytes."""
    shown = printable(text)
    if len(shown) <= limit:
        return shown
    keep = (limit - 3) // 2
    return f"{shown[:keep]}...{shown[-keep:]}"


def some_of(items: Sequence[str], at_most: int) -> str:
    """The first ``at_most`` items, comma-separated, and how many more there are: 'a, b and 3 more'."""
    more = f" and {len(items) - at_most} more" if len(items) > at_most else ""
    return ", ".join(items[:at_most]) + more
