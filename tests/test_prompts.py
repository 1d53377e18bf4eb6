"""Labels, aliases and template sets: parsing a user's words into prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from clipzs.errors import UsageError
from clipzs.prompts import (
    Label,
    builtin_template_sets,
    expand,
    labels_from_file,
    labels_from_option,
    load_templates,
)


def test_builtin_sets_are_open_clips_own() -> None:
    assert set(builtin_template_sets()) >= {"simple", "openai-7", "openai-80"}
    assert load_templates("openai-80") == tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
    assert load_templates("openai-7") == tuple(t("{}") for t in SIMPLE_IMAGENET_TEMPLATES)
    assert load_templates("simple") == ("a photo of a {}.",)


def test_labels_with_aliases() -> None:
    labels = labels_from_option("cat=cat|kitten|house cat, dog ,")
    assert labels == (Label("cat", ("cat", "kitten", "house cat")), Label("dog", ("dog",)))
    assert labels_from_option("cat | kitten|house cat,dog") == labels, "without '=', the first alias names it"
    assert expand(labels[0], ["a photo of a {}.", "art of the {}."]) == [
        "a photo of a cat.",
        "art of the cat.",
        "a photo of a kitten.",
        "art of the kitten.",
        "a photo of a house cat.",
        "art of the house cat.",
    ]


def test_labels_file_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("# pets\ncat\n\ndog=dog|puppy\nsea, ocean\n", encoding="utf-8")
    assert [label.name for label in labels_from_file(path)] == ["cat", "dog", "sea, ocean"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cat,cat", "twice"),
        (" , ", "no labels"),
        ("=cat", "needs a name"),
        ("cat=cat||kitten", "empty alias"),
        ("cat||kitten", "empty alias"),
        ("|kitten", "empty alias"),
        ("cat|kitten,cat", "twice"),
        ("caf\udce9,dog", r"label 'caf\\udce9' is not UTF-8 text"),  # (a Latin-1 argument, as Python reads it)
        ("caf\u00e9,cafe\u0301", "are the same text in two Unicode forms"),
        ("red circle\nblue square\ngreen triangle", "holds line breaks: 'red circle' and 2 more lines"),
        ('"Washington, D.C.,Paris', "opens a quote"),
        ('"Weird" Al,cat', "opens a quote"),
    ],
)
def test_bad_labels_say_why(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        labels_from_option(text)


def test_a_label_quoted_whole_may_hold_commas() -> None:
    """As in CSV: a label that is one item quoted whole holds commas ("" is a quote in it); a quote elsewhere is
    the label's own."""
    labels = labels_from_option('"Washington, D.C.", Paris ,"""Weird"" Al",12" vinyl,"AT&T, Inc.=AT&T|AT and T"')
    assert [label.name for label in labels] == ["Washington, D.C.", "Paris", '"Weird" Al', '12" vinyl', "AT&T, Inc."]
    assert labels[-1].aliases == ("AT&T", "AT and T")


def test_a_labels_file_names_the_line_of_a_mistake(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("cat\n# a comment\n\ndog=\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"classes.txt, line 4: empty alias in label 'dog='"):
        labels_from_file(path)
    path.write_text("missile\ndog\nmissile\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"classes.txt: label 'missile' is given twice"):
        labels_from_file(path)


def test_template_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("# my prompts\na satellite photo of {}.\n\n{} seen from above\n", encoding="utf-8")
    assert load_templates(str(path)) == ("a satellite photo of {}.", "{} seen from above")


@pytest.mark.parametrize(
    ("content", "message"),
    [("no placeholder here\n", "exactly one"), ("{} and {}\n", "exactly one"), ("# only\n", "no templates")],
)
def test_bad_template_files_say_why(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError, match=message):
        load_templates(str(path))


def test_unknown_template_set_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match="openai-80"):
        load_templates("openai-81")
