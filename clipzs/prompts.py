"""Template sets, label parsing and prompt expansion: pure functions, no torch.

Label syntax, one label per item (comma-separated on the command line, one per line in a file)::

    cat                          the label "cat", prompted as "cat"
    cat=cat|kitten|house cat     the label "cat", its prompts ensembled over three aliases
    cat|kitten|house cat         the same: without a name, the first alias names the label

A template is a line of text in which ``{}`` marks where the label (or alias) goes.
"""

from __future__ import annotations

import codecs
import csv
import importlib.resources
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clipzs.errors import UsageError

PLACEHOLDER = "{}"


@dataclass(frozen=True)
class Label:
    """One class: the name reported in results and the aliases whose prompts are ensembled into it."""

    name: str
    aliases: tuple[str, ...]

    def __post_init__(self) -> None:
        # A string's letters would each be an alias ("a photo of a c."): refused, as the library refuses a lone
        # string wherever it takes a list. A list is kept as a tuple, so that labels compare and hash alike.
        if not isinstance(self.aliases, (list, tuple)) or not all(isinstance(a, str) for a in self.aliases):
            one = f"Label({self.name!r}, ({self.aliases!r},)), or several: " if isinstance(self.aliases, str) else ""
            raise UsageError(
                f"a label's aliases must be a list or tuple of strings, not {self.aliases!r}: "
                f"{one}Label('circle', ('circle', 'round'))"
            )
        object.__setattr__(self, "aliases", tuple(self.aliases))


def _prompts_dir() -> Path:
    """Built-in template sets: inside the installed package, or prompts/ beside it in a source checkout."""
    packaged = Path(str(importlib.resources.files("clipzs"))) / "prompts"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "prompts"


def builtin_template_sets() -> dict[str, Path]:
    """Names of the built-in template sets and the files that hold them."""
    return {p.stem: p for p in sorted(_prompts_dir().glob("*.txt"))}


def as_text(name: str) -> str:
    """A name as the text it reads, to compare names by: text that looks the same may be written in two Unicode
    forms, an accent as a letter of its own ("café" as editors write it) or as a mark after its letter (as macOS
    names folders and files)."""
    return unicodedata.normalize("NFC", name)


def parse_templates(text: str, source: str) -> tuple[str, ...]:
    """Templates from text: one per line; blank lines and lines starting with '#' are skipped."""
    templates = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.count(PLACEHOLDER) != 1:
            raise UsageError(
                f"{source}, line {number}: a template needs exactly one '{{}}' marking the label: {line!r}"
            )
        templates.append(line)
    if not templates:
        raise UsageError(f"{source} holds no templates (one per line, '{{}}' marking the label)")
    return tuple(templates)


def load_templates(name_or_path: str) -> tuple[str, ...]:
    """A built-in template set by name, or the templates in a text file."""
    builtin = builtin_template_sets()
    if name_or_path in builtin:
        return parse_templates(builtin[name_or_path].read_text(encoding="utf-8"), name_or_path)
    path = Path(name_or_path)
    if path.is_file():
        return parse_templates(_read_words(path), str(path))
    raise UsageError(
        f"unknown template set {name_or_path!r}: use one of {', '.join(builtin)} or the path of a text file "
        "with one template per line"
    )


def parse_label(spec: str) -> Label:
    """Parse ``name``, ``name=alias|alias|...`` or ``alias|alias|...`` (the first alias names the label)."""
    lines = spec.strip().splitlines()
    if len(lines) > 1:  # (``-l "$(cat classes.txt)"`` would be one label of many lines)
        more = f"{len(lines) - 1} more line{'s' if len(lines) > 2 else ''}"
        raise UsageError(
            f"a label holds line breaks: {lines[0]!r} and {more}: labels are separated by commas in --labels "
            "('cat,dog'); read a file of one label per line with --labels-file FILE (in Python: "
            "build(text.splitlines()))"
        )
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if sep:
        aliases = tuple(a.strip() for a in rest.split("|"))
    else:
        aliases = tuple(a.strip() for a in name.split("|"))
        name = aliases[0]
    if not all(aliases):
        raise UsageError(f"empty alias in label {spec!r} (write name=alias|alias)")
    if not name:
        raise UsageError(f"a label needs a name: {spec!r}")
    return Label(name, aliases)


def parse_labels(specs: Iterable[str]) -> tuple[Label, ...]:
    """Labels from specs; blank specs are skipped, duplicates and an empty list are errors."""
    return check_labels(parse_label(s) for s in specs if s.strip())


def check_labels(given: Iterable[Label]) -> tuple[Label, ...]:
    """The labels, refused when there are none, one has an empty name or alias, or a name is given twice."""
    labels = tuple(given)
    for label in labels:
        if not label.name.strip() or not label.aliases or not all(a.strip() for a in label.aliases):
            raise UsageError(f"a label needs a name and aliases that are not empty: {label!r}")
        for text in (label.name, *label.aliases):
            if not is_text(text):  # it could be neither encoded into a prompt nor written to a file
                raise UsageError(f"label {text!r} is not UTF-8 text (a name in another encoding?): give it in UTF-8")
    if not labels:
        raise UsageError(
            "no labels given: name the classes (--labels 'cat,dog' or --labels-file FILE; build(['cat', 'dog']))"
        )
    seen: dict[str, str] = {}
    for label in labels:
        text = as_text(label.name)
        first = seen.get(text)
        if first == label.name:
            raise UsageError(f"label {label.name!r} is given twice")
        if first is not None:
            raise UsageError(
                f"labels {first!r} and {label.name!r} are the same text in two Unicode forms (an accent written as "
                "a letter of its own, or as a mark after its letter): give it once"
            )
        seen[text] = label.name
    return labels


def is_text(text: str) -> bool:
    """Whether ``text`` is UTF-8 text: a file or folder name in another encoding ('caf\\xe9' in Latin-1) comes to
    Python with lone surrogates ('caf\\udce9'), which no prompt can hold, nor what opens files by a UTF-8 path."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def labels_from_option(*values: str) -> tuple[Label, ...]:
    """Labels from ``--labels`` values, each comma-separated (the option may be given more than once)."""
    return parse_labels(item for text in values for item in split_labels_option(text))


def split_labels_option(text: str) -> list[str]:
    """The items of a ``--labels`` value, split at commas as a CSV line is: a label quoted whole in double quotes
    may hold commas (``"Washington, D.C.",Paris``; ``""`` is a quote in it), and a quote elsewhere is a character
    of the label (``12" vinyl``). A quote that opens an item and is not closed right at its end is refused (the
    label it was meant to quote would be cut in two, or end in what follows the quote)."""
    if "\n" in text or "\r" in text:  # (not CSV's error: parse_label says what to do with a label of many lines)
        return text.split(",")
    try:
        return next(csv.reader([text], skipinitialspace=True, strict=True), [])
    except csv.Error:
        raise UsageError(
            f"--labels {text!r}: a label that opens a quote must close it at its end, right before the next comma: "
            "quote a label holding commas whole ('\"Washington, D.C.\",Paris'), and write a quote inside it twice "
            '(\'"""Weird"" Al",cat\'); or give one label per line with --labels-file'
        ) from None


def labels_option_item(name: str) -> str:
    """How ``name`` is written as one item of --labels: quoted whole where it holds a comma or starts with a quote."""
    if "," in name or name.lstrip().startswith('"'):
        return '"' + name.replace('"', '""') + '"'
    return name


def labels_from_file(path: Path) -> tuple[Label, ...]:
    """Labels from a file with one label per line; blank lines and '#' comments are skipped."""
    lines = _label_lines(path)
    if not lines:
        raise UsageError(
            f"the labels file {path} holds no labels, only blank lines and comments: write one label per line "
            "(cat, or dog=dog|puppy)"
        )
    return _parse_lines(path, lines)


def class_prompts_from_file(path: Path) -> tuple[Label, ...]:
    """The prompts of some of a dataset's classes (``eval`` and ``probe fit``'s --labels-file), one
    ``class=alias|alias`` per line. The classes it does not name are prompted by their names, so a file that names
    none (blank lines and comments only) renames nothing; it is warned of, as a line that names no class is."""
    import warnings

    from clipzs.errors import ClipzsWarning

    lines = _label_lines(path)
    if not lines:
        message = f"the labels file {path} holds no labels, only blank lines and comments: classes keep their names"
        warnings.warn(message, ClipzsWarning, stacklevel=2)
        return ()
    return _parse_lines(path, lines)


def _label_lines(path: Path) -> list[tuple[int, str]]:
    """A labels file's lines that are neither blank nor '#' comments, with their numbers."""
    lines = enumerate(_read_words(path).splitlines(), start=1)
    return [(number, line) for number, line in lines if line.strip() and not line.lstrip().startswith("#")]


def _parse_lines(path: Path, lines: Sequence[tuple[int, str]]) -> tuple[Label, ...]:
    """The labels of a labels file's lines; a mistake is named by its file and line, as in a file of a thousand."""
    labels = []
    for number, line in lines:
        try:
            labels.append(parse_label(line))
        except UsageError as e:
            raise UsageError(f"{path}, line {number}: {e}") from e
    try:
        return check_labels(labels)
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from e


def expand(label: Label, templates: Sequence[str]) -> list[str]:
    """Every prompt for one label: each alias in each template, aliases outermost."""
    return [t.replace(PLACEHOLDER, alias) for alias in label.aliases for t in templates]


def read_text(path: Path, what: str = "") -> str:
    """A user's text file, UTF-8 with or without the byte-order mark Windows editors put first, or UTF-16 with
    its byte-order mark (Notepad's "Unicode", PowerShell's ``>``), line endings as written; UsageError saying why
    if it cannot be read (``what`` names the kind of file in the message)."""
    name = f"{what} {path}" if what else str(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {name}: {e.strerror or e}") from e
    utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    try:
        text = data.decode("utf-16" if utf16 else "utf-8-sig")
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        kind = "UTF-16" if utf16 else "UTF-8"
        raise UsageError(f"cannot read {name}: line {line} is not {kind} text (save the file as UTF-8)") from e
    return text


def _read_words(path: Path) -> str:
    """The text of a labels or templates file (``read_text``), refused where it holds a NUL character, which no
    label or prompt does, and which UTF-16 without its byte-order mark puts beside every letter."""
    text = read_text(path)
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise UsageError(
            f"cannot read {path}: line {line} holds a NUL character, so it is not text (UTF-16 without a byte-order "
            "mark?): save the file as UTF-8"
        )
    return text
