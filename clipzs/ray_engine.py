"""The same classification on Ray Data, for image sets that outgrow one machine (``pip install 'clipzs[ray]'``).

Paths are listed and sharded by Ray; images are decoded in Ray tasks, with the model's own resize and crop;
a pool of actors, each holding the model and the classifier, encodes and scores them (one actor per GPU when
the cluster has GPUs, else CPU slots). Results come back to the driver in input order and go through the same
writers as the local engine. It joins a running cluster the way Ray does (``RAY_ADDRESS``, or a cluster
started with ``ray start`` on this machine) and starts a local instance otherwise.

Model files (``--pretrained PATH``, ``--model-config``) must be readable at the same path on every node. The
image-feature cache is not used: each node would need its own.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipzs.errors import UsageError
from clipzs.prediction import Prediction


def _decode(batch: dict[str, np.ndarray], geometry: Any, draft_size: int | None) -> dict[str, np.ndarray]:
    """A Ray task: decode and resize a batch of images; unreadable ones carry their reason instead."""
    from clipzs.errors import ImageError
    from clipzs.images import load_image

    pixels: list[np.ndarray | None] = []
    errors = []
    for path in batch["path"]:
        try:
            pixels.append(np.asarray(geometry(load_image(Path(path), draft_size=draft_size))))
            errors.append("")
        except ImageError as e:
            pixels.append(None)
            errors.append(str(e))
    shape = next((p.shape for p in pixels if p is not None), (1, 1, 3))
    stacked = np.stack([p if p is not None else np.zeros(shape, dtype=np.uint8) for p in pixels])
    return {"path": batch["path"], "pixels": stacked, "error": np.array(errors, dtype=object)}


class _Scorer:
    """A Ray actor: the model and the classifier, loaded once, scoring decoded batches."""

    def __init__(self, model: dict[str, Any], classifier: bytes, top_k: int) -> None:
        import tempfile

        from clipzs.api import ZeroShotClassifier
        from clipzs.classifier import Classifier

        self.zsc = ZeroShotClassifier.from_pretrained(**model)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "classifier.clf")
            path.write_bytes(classifier)
            self.zsc.use(Classifier.load(path))
        self.top_k = top_k

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from clipzs.errors import ImageError

        ok = [i for i, error in enumerate(batch["error"]) if not error]
        features = iter(self.zsc.model.encode_prepared([batch["pixels"][i] for i in ok]) if ok else ())
        items = [
            (Path(path), ImageError(str(error)) if error else next(features))
            for path, error in zip(batch["path"], batch["error"], strict=True)
        ]
        records = [json.dumps(p.to_dict()) for p in self.zsc.predict(items, self.top_k)]
        return {"record": np.array(records, dtype=object)}


def classify_on_ray(
    paths: Sequence[Path],
    *,
    model: dict[str, Any],
    classifier_file: Path,
    geometry: Any,
    draft_size: int | None,
    top_k: int,
    batch_size: int,
    workers: int | None = None,
) -> Iterator[Prediction]:
    """Classify on Ray Data, yielding predictions in input order.

    ``model``: keyword arguments of ``ZeroShotClassifier.from_pretrained``; ``classifier_file``: the classifier
    to score against; ``geometry``: the model's PIL resize-and-crop (``LoadedModel.pixels.geometry``).
    """
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise UsageError("--engine ray needs Ray: pip install 'clipzs[ray]'") from e
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # stderr is for clipzs's own diagnostics
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    gpus = int(ray.cluster_resources().get("GPU", 0))
    pool = workers or max(1, gpus)
    dataset = ray.data.from_items([{"path": str(p)} for p in paths])
    decoded = dataset.map_batches(
        functools.partial(_decode, geometry=geometry, draft_size=draft_size), batch_size=batch_size
    )
    scored = decoded.map_batches(
        _Scorer,
        batch_size=batch_size,
        concurrency=pool,
        num_gpus=1 if gpus else 0,
        fn_constructor_kwargs={
            "model": {**model, "device": "cuda" if gpus else "cpu"},
            "classifier": classifier_file.read_bytes(),
            "top_k": top_k,
        },
    )
    for row in scored.iter_rows():
        yield Prediction.from_dict(json.loads(row["record"]))
