"""Sorting images into one folder per label, with a manifest that can undo it.

Nothing is ever overwritten: a name already taken in the destination gets a numbered suffix. Each step is
written to the manifest (JSON Lines, flushed, with absolute paths) before the file is touched, so an interrupted
sort leaves a manifest that covers everything it did, and ``undo`` skips the steps that never happened. A file is
copied under a temporary name and renamed into place whole, so an interrupted copy leaves no cut-off image.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO

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


def refuse_shared_folders(names: Iterable[str], min_score: float) -> None:
    """Refuse labels whose folders would be one (``red/circle`` and ``red_circle``, ``cat.`` and ``cat``; ``Cat``
    and ``cat`` on a disk that ignores case, as the DEST may be): their images would be merged in it, and which
    label each had would be lost. Above a ``min_score`` of 0, ``unsorted`` is taken too."""
    owners: dict[str, str] = {}
    for name in names:
        folder = folder_name(name)
        if min_score > 0 and folder.casefold() == UNSORTED:
            raise UsageError(
                f"a label named {UNSORTED!r} would share the folder of images scoring below --min-score: "
                "rename the label"
            )
        other = owners.setdefault(folder.casefold(), name)
        if other != name:
            where = (
                f"the folder {folder!r}"
                if folder_name(other) == folder
                else f"a folder on a disk that ignores case ({folder_name(other)!r}, {folder!r})"
            )
            raise UsageError(f"labels {other!r} and {name!r} would share {where}: rename one")


def once_each(paths: Iterable[Path]) -> Iterator[Path]:
    """Each file once, however often it is given (a path list naming it twice, or as ``x.png`` and ``./x.png``):
    a second move would find it gone, a second copy would be a duplicate. Compared by where its folder resolves
    to and its name, so a link beside the file it points to is still sorted as a file of its own."""
    seen: set[Path] = set()
    for path in paths:
        key = path.parent.resolve() / path.name
        if key not in seen:
            seen.add(key)
            yield path


def plan(predictions: Iterable[Prediction], dest: Path, mode: str, min_score: float = 0.0) -> Iterator[Step]:
    """Where each readable image goes: DEST/<label>/, or DEST/unsorted/ below ``min_score``, never onto a file.
    Paths are absolute (not resolved), so the manifest can be undone from any folder."""
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    dest = Path(os.path.abspath(dest))
    taken: set[Path] = set()
    for prediction in predictions:
        if prediction.error is not None or prediction.label is None or prediction.score is None:
            continue
        folder = folder_name(prediction.label) if prediction.score >= min_score else UNSORTED
        target = _free_name(dest / folder / Path(prediction.path).name, taken)
        taken.add(target)
        score = round(prediction.score, SCORE_DIGITS)
        yield Step(os.path.abspath(prediction.path), str(target), prediction.label, score, mode)


def _free_name(path: Path, taken: set[Path]) -> Path:
    candidate, number = path, 1
    while candidate in taken or os.path.lexists(candidate):
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
        number += 1
    return candidate


def apply(
    steps: Iterable[Step], manifest: Path, failed: Callable[[Step, OSError], None] | None = None
) -> Iterator[Step]:
    """Carry the steps out, each recorded in the manifest before its file is touched; yields each one done.

    A step that fails (its source deleted meanwhile) is taken out of the manifest again, as it never happened,
    and given to ``failed``, so that the rest go on; without ``failed``, its error is raised."""
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest, "a", encoding="utf-8") as log:
        for step in steps:
            start = log.tell()
            log.write(step_json(step) + "\n")
            _sync(log)
            try:
                _carry_out(step)
            except OSError as e:
                log.truncate(start)
                _sync(log)
                with contextlib.suppress(OSError):  # a label folder made for it alone
                    Path(step.destination).parent.rmdir()
                if failed is None:
                    raise
                failed(step, e)
                continue
            yield step


def _sync(log: IO[str]) -> None:
    log.flush()
    os.fsync(log.fileno())


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
        _copy_into_place(source, destination)
    elif step.mode == "move":
        _move(source, destination)
    else:
        destination.symlink_to(source.resolve())


def _move(source: Path, destination: Path) -> None:
    """A rename; across filesystems, a copy put into place whole and then the source removed (or, if that
    fails, the copy: the file is in one place or the other, never cut off in one)."""
    try:
        os.rename(source, destination)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    _copy_into_place(source, destination)
    try:
        source.unlink()
    except OSError:
        destination.unlink()
        raise


def _copy_into_place(source: Path, destination: Path) -> None:
    """Copy to a temporary name beside ``destination`` and give it that name only once whole: a copy cut
    short (Ctrl-C, a full disk) leaves nothing there, where a part would be kept by undo and worked around by
    the next sort. The temporary is hidden, so a sort killed outright leaves one that no later sort picks up."""
    fd, name = tempfile.mkstemp(dir=destination.parent, prefix=".clipzs-", suffix=".part")
    os.close(fd)
    tmp = Path(name)
    try:
        shutil.copy2(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _rename_free(tmp, destination)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _rename_free(tmp: Path, destination: Path) -> None:
    """Give ``tmp`` the name ``destination``, chosen free: by a hard link, which fails rather than replace a file
    that another program put there meanwhile, as a rename would; by a rename where there are no hard links (FAT)."""
    try:
        os.link(tmp, destination)
    except FileExistsError:
        raise
    except OSError:
        os.rename(tmp, destination)
    else:
        tmp.unlink()


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
    'left: ...'); nothing is ever overwritten, and no copy is removed that is not still a copy of its source."""
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
            _move(destination, source)
            return "restored"
        kept = _why_kept(source, destination, mode)
        if kept:
            return f"left: {kept}"
        destination.unlink()
        return "removed"
    except OSError as e:
        return f"left: {e.strerror or e}"


def _why_kept(source: Path, destination: Path, mode: str) -> str | None:
    """Why removing this copy or link would lose something, or None: a link the user replaced by a file, a copy
    whose source is gone (it is the only one left) or that differs from it (edited since, or the source was)."""
    if mode == "link":
        return None if destination.is_symlink() else "it is not a link now"
    if not source.exists():
        return "the source is gone, this copy is the only one"
    if not filecmp.cmp(source, destination, shallow=False):
        return "it differs from its source"
    return None
