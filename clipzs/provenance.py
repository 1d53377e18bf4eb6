"""What wrote a results file: recorded in the cache folder when a run starts writing it, and checked when
``--resume`` carries it on, so that one file never mixes the answers of two classifiers (another model, other
weights, templates or labels). A results file holds only paths and scores, which cannot tell that apart."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipzs.cache import atomic_write, cache_dir, file_id, key_of, write_text

if TYPE_CHECKING:
    from clipzs.classifier import Classifier

FOLDER = "outputs"
ASPECTS = {  # what a classifier's identity holds, as a message names it when it differs
    "fingerprint": "another model or other weights",
    "templates": "other templates",
    "labels": "other labels",
    "kind": "another kind of classifier",
    "trained": "another trained classifier",
}


def identity(classifier: Classifier, model: str) -> dict[str, Any]:
    """What scores depend on, besides the images: the model that encodes them (its ``fingerprint``), the
    classifier's templates, its labels with their aliases, and for a trained classifier (a probe, a blend) its
    weights. (The model's own fingerprint, not the one a classifier file records: a file made by an older clipzs
    records another form of it, for the same model.)"""
    meta = classifier.meta
    found: dict[str, Any] = {
        "fingerprint": model,
        "templates": meta.get("templates"),
        "labels": sorted([label.name, *label.aliases] for label in classifier.labels),  # (in any order)
        "kind": meta.get("kind"),
    }
    if classifier.bias is not None or meta.get("kind") != "zero-shot":  # weights that no text encoder rebuilds
        digest = hashlib.sha256(classifier.weights.float().numpy().tobytes())
        if classifier.bias is not None:
            digest.update(classifier.bias.float().numpy().tobytes())
        found["trained"] = digest.hexdigest()
    return found


def describe(classifier: Classifier) -> str:
    """The classifier as a message names it: 'ViT-B-32 (laion2b_s34b_b79k), 7 templates, labels cat, dog'."""
    from clipzs.output import some_of

    meta = classifier.meta
    model = f"{meta.get('model', 'an unnamed model')} ({meta.get('pretrained', 'unnamed weights')})"
    kind = meta.get("kind", "zero-shot")
    templates = meta.get("templates") or []
    count = f"{len(templates)} template{'' if len(templates) == 1 else 's'}"
    made = count if kind == "zero-shot" else f"a {kind} classifier"
    return f"{model}, {made}, labels {some_of(classifier.names, 5)}"


def _record_path(output: Path) -> Path:
    return cache_dir() / FOLDER / f"{key_of({'output': os.path.abspath(output)})}.json"


def _file_id(output: Path) -> list[int] | None:
    """The file's ``file_id``, as its record holds it: what tells the file a run wrote from one made again under
    its name. (Where a file system numbers its files anew, the record is passed over, and resuming checks the
    labels only.)"""
    found = file_id(output)
    return None if found is None else list(found)


def record(output: Path, classifier: Classifier, model: str) -> None:
    """Note that ``classifier``, with the model of fingerprint ``model``, writes ``output`` (a file or a Parquet
    folder, already created). A record that cannot be written costs only the check of a later ``--resume``, so a
    cache folder that takes no writes is passed over."""
    entry = {
        "output": os.path.abspath(output),
        "file": _file_id(output),
        "identity": identity(classifier, model),
        "described": describe(classifier),
    }
    text = json.dumps(entry, ensure_ascii=True)
    with contextlib.suppress(OSError):
        atomic_write(_record_path(output), lambda tmp: write_text(tmp, text))


def recorded(output: Path) -> dict[str, Any] | None:
    """The record of the classifier that last wrote ``output``, or None: none kept, unreadable, or kept for
    another file of that name (one deleted and made again: its file id differs)."""
    try:
        entry = json.loads(_record_path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("identity"), dict) or "described" not in entry:
        return None
    if entry.get("output") != os.path.abspath(output) or entry.get("file") != _file_id(output):
        return None
    return entry


def differences(earlier: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two identities, as a message says it ('other templates', ...)."""
    return [said for key, said in ASPECTS.items() if earlier.get(key) != now.get(key)]
