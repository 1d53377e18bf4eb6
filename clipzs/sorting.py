"""Sorting images into one folder per label, with a manifest that can undo it.

Nothing is ever overwritten: a name already taken in the destination gets a numbered suffix. Each step is
written to the manifest (JSON Lines, flushed) before the file is touched, so an interrupted sort leaves a
manifest that covers everything it did, and ``undo`` skips the steps that never happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from clipzs.errors import UsageError
from clipzs.prediction import SCORE_DIGITS, Prediction
from clipzs.prompts import read_text

MODES = ("copy", "move", "link")
UNSORTED = "unsorted"


@dataclass(frozen=True)
class Step:
    """One image to put into its label's folder."""

    source: str
    destination: str
    label: str
    score: float
    mode: str


def folder_name(label: str) -> str:
    """A label as a single, safe folder name."""
    cleaned = "".join("_" if c in '/\\:*?"<>|' or not c.isprintable() else c for c in label).strip(" .")
    return cleaned or "_"


def plan(predictions: Iterable[Prediction], dest: Path, mode: str, min_score: float = 0.0) -> Iterator[Step]:
    """Where each readable image goes: DEST/<label>/, or DEST/unsorted/ below ``min_score``, never onto a file."""
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    taken: set[Path] = set()
    for prediction in predictions:
        if prediction.error is not None or prediction.label is None or prediction.score is None:
            continue
        folder = folder_name(prediction.label) if prediction.score >= min_score else UNSORTED
        target = _free_name(dest / folder / Path(prediction.path).name, taken)
        taken.add(target)
        yield Step(prediction.path, str(target), prediction.label, round(prediction.score, SCORE_DIGITS), mode)


def _free_name(path: Path, taken: set[Path]) -> Path:
    candidate, number = path, 1
    while candidate in taken or os.path.lexists(candidate):
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
        number += 1
    return candidate


def apply(steps: Iterable[Step], manifest: Path) -> Iterator[Step]:
    """Carry the steps out, each recorded in the manifest before its file is touched; yields each one done."""
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest, "a", encoding="utf-8") as log:
        for step in steps:
            log.write(step_json(step) + "\n")
            log.flush()
            os.fsync(log.fileno())
            _carry_out(step)
            yield step


def prepare_manifest(manifest: Path) -> None:
    """Ready an existing ``manifest`` for more steps: refuse a file that is not a sort manifest (it would be
    changed, and the sort it then recorded could not be undone), and end its last line, which the next step
    would otherwise be written onto: a line that a killed sort cut short is dropped (that step never happened)."""
    if not manifest.exists():
        return
    try:
        read_manifest(manifest)
    except UsageError as e:
        raise UsageError(f"{e}: give --manifest a new file, or the manifest of an earlier sort") from None
    with open(manifest, "r+b") as log:
        data = log.read()
        last = data[data.rfind(b"\n") + 1 :]
        if last.strip():
            try:
                json.loads(last)
            except ValueError:
                log.truncate(len(data) - len(last))
            else:
                log.write(b"\n")  # a whole step whose line end was lost (an editor's)


def inside(path: Path, resolved_folder: Path) -> bool:
    """Whether the file ``path`` lies in ``resolved_folder`` (resolved once by the caller) or below, by where its
    folder resolves to (a link that a ``--mode link`` sort left there lies in it, wherever it points)."""
    return (path.parent.resolve() / path.name).is_relative_to(resolved_folder)


def step_json(step: Step) -> str:
    """A step as one line of JSON; a file name that is not UTF-8 keeps its bytes as JSON escapes."""
    from clipzs.output import json_text

    return json_text(asdict(step))


def _carry_out(step: Step) -> None:
    source, destination = Path(step.source), Path(step.destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if step.mode == "copy":
        shutil.copy2(source, destination)
    elif step.mode == "move":
        shutil.move(source, destination)
    else:
        destination.symlink_to(source.resolve())


def read_manifest(manifest: Path) -> list[Step]:
    lines = read_text(manifest, "manifest").split("\n")  # not splitlines: a name may hold U+2028
    steps = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines) and _cut_short(line):
                break  # the last line of a killed sort may be cut short (no line end): that step never happened
            record = None
        step = _step(record)
        if step is None:
            raise UsageError(f"{manifest}, line {number}: not a clipzs sort manifest")
        steps.append(step)
    return steps


def _cut_short(line: str) -> bool:
    """Whether ``line`` may be the start of a step's line (``step_json``), cut short."""
    start = '{"source": '
    return line.startswith(start) or start.startswith(line)


def _step(record: object) -> Step | None:
    """A manifest line's step, or None if it is not one: paths and label as text, a score, a known mode."""
    if not isinstance(record, dict) or set(record) != {f.name for f in fields(Step)}:
        return None
    step = Step(**record)
    texts = (step.source, step.destination, step.label, step.mode)
    ok = all(isinstance(x, str) and x for x in texts) and isinstance(step.score, (int, float))
    return step if ok and step.mode in MODES else None


def undo(manifest: Path) -> Iterator[tuple[Step, str]]:
    """Reverse a sort, last step first: moved files go back, copies and links are removed, label folders left
    empty are removed. Yields each step with what was done ('restored', 'removed', or why it was left alone:
    'left: ...'); nothing is ever overwritten."""
    for step in reversed(read_manifest(manifest)):
        source, destination = Path(step.source), Path(step.destination)
        if not os.path.lexists(destination):
            back = step.mode != "move" or os.path.lexists(source)
            yield step, "already undone" if back else "not there (the sort stopped before it)"
        elif destination.is_dir() and not destination.is_symlink():
            yield step, "left: the destination is a folder now"
            continue
        elif step.mode == "move" and os.path.lexists(source):
            yield step, "left: the source path is taken again"
            continue
        else:
            yield step, _reverse(source, destination, step.mode)
        with contextlib.suppress(OSError):  # only succeeds for a label folder now empty
            destination.parent.rmdir()


def _reverse(source: Path, destination: Path, mode: str) -> str:
    """Move the file back, or remove the copy or link; what was done, or why it could not be."""
    try:
        if mode == "move":
            source.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(destination, source)
            return "restored"
        destination.unlink()
        return "removed"
    except OSError as e:
        return f"left: {e.strerror or e}"
