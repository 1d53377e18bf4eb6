"""The same classification on Ray Data, for image sets that outgrow one machine (``pip install 'ray[data]'``).

Paths are listed by the driver and sharded by Ray; images are decoded in Ray tasks, with the model's own resize
and crop; a pool of actors, each holding the model and the classifier, encodes and scores them (one actor per
GPU when the cluster has GPUs, else one per node, each using the node's cores). Results come back to the driver
in input order and go through the same writers as the local engine, or, for Parquet, Ray's tasks write the part
files themselves and only each image's path and error come back. It joins a running cluster the way Ray does
(``RAY_ADDRESS``, or a cluster started with ``ray start`` on this machine) and starts a local instance otherwise.

Model files (``--pretrained PATH``, ``--model-config``) and a Parquet output folder must be at the same path on
every node. The image-feature cache is not used: each node would need its own.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipzs.config import DEFAULT_BATCH_SIZE, GPU_BATCH_SIZE
from clipzs.errors import UsageError
from clipzs.images import Draft
from clipzs.output import PARQUET_PART_ROWS, open_parquet_folder
from clipzs.prediction import Prediction

TASK_CPUS = 0.25
"""The CPU slot a decode or write task asks for. Tasks need room beside the actors: actors holding every slot
while the tasks that feed them wait for one is a deadlock. A request unlike the actors' also keeps Ray Data from
fusing decoding into the actors, so it runs in tasks of its own."""


@dataclass(frozen=True)
class ActorPlan:
    """How many scoring actors, what each asks of Ray, and how many torch threads it runs."""

    actors: int
    num_cpus: float
    num_gpus: float
    threads: int | None  # None: leave torch's CPU threads as Ray sets them (GPU actors)


def plan_actors(nodes: Sequence[dict[str, float]], workers: int | None) -> ActorPlan:
    """Size the actor pool for a cluster, given each live node's resources (``{"CPU": 8, "GPU": 1, ...}``).

    With GPUs: ``workers`` actors (default one per GPU), sharing a GPU evenly when there are more actors than
    GPUs. CPU only: ``workers`` actors (default one per node); the actors of a node share its CPU slots but a
    reserve for the decode and write tasks (an eighth, at least two tasks' worth), and each runs as many torch
    threads as the slots it holds, rounded up.
    """
    gpus = sum(node.get("GPU", 0) for node in nodes)
    if gpus:
        actors = workers or int(gpus)
        return ActorPlan(actors, 1.0, 1 / math.ceil(actors / gpus), None)
    cpus = [node["CPU"] for node in nodes if node.get("CPU")]
    if not cpus:  # an autoscaling cluster with no workers yet: one slot each, Ray adds nodes to fit
        return ActorPlan(workers or 1, 1.0, 0.0, 1)
    actors = workers or len(cpus)
    per_node = math.ceil(actors / len(cpus))  # actors packed on a node when they outnumber the nodes
    smallest = min(cpus)
    room = smallest - max(2 * TASK_CPUS, smallest / 8)
    num_cpus = math.floor(room / per_node * 1000) / 1000  # rounded down, so that per_node of them fit
    if num_cpus == TASK_CPUS:
        num_cpus -= 0.001  # the same request as the tasks' would let Ray fuse decoding into the actors
    return ActorPlan(actors, num_cpus, 0.0, max(1, math.ceil(num_cpus)))


def _decode(batch: dict[str, np.ndarray], geometry: Any, draft: Draft | None) -> dict[str, np.ndarray]:
    """A Ray task: decode and resize a batch of images; unreadable ones carry their reason instead."""
    from clipzs.errors import ImageError
    from clipzs.images import load_image

    pixels: list[np.ndarray | None] = []
    errors = []
    for path in batch["path"]:
        try:
            pixels.append(np.asarray(geometry(load_image(Path(path), draft=draft))))
            errors.append("")
        except ImageError as e:
            pixels.append(None)
            errors.append(str(e))
    shape = next((p.shape for p in pixels if p is not None), (1, 1, 3))
    stacked = np.stack([p if p is not None else np.zeros(shape, dtype=np.uint8) for p in pixels])
    return {"index": batch["index"], "path": batch["path"], "pixels": stacked, "error": np.array(errors, dtype=object)}


class _Scorer:
    """A Ray actor: the model and the classifier, loaded once, scoring decoded batches."""

    def __init__(self, model: dict[str, Any], classifier: bytes, top_k: int, threads: int | None) -> None:
        import tempfile

        import torch

        from clipzs.api import ZeroShotClassifier
        from clipzs.classifier import Classifier

        if threads:
            torch.set_num_threads(threads)  # Ray sets one thread per whole slot held, at least one
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
        return {"index": batch["index"], "record": np.array(records, dtype=object)}


def _write_part(batch: dict[str, np.ndarray], folder: str, run: int) -> dict[str, np.ndarray]:
    """A Ray task: write a batch of results as one Parquet part, named by the run and its first input's index,
    so that the parts sorted by name hold the results in input order (written as the local engine writes its
    parts: whole, then renamed into place). What comes back to the driver is each image's path and error ("" when
    scored)."""
    from clipzs.output import write_parquet_part

    records = [json.loads(record) for record in batch["record"]]
    write_parquet_part(Path(folder, f"part-{run:05d}-{int(batch['index'][0]):09d}.parquet"), records)
    return {
        "path": np.array([r["path"] for r in records], dtype=object),
        "error": np.array([r.get("error", "") for r in records], dtype=object),
    }


def classify_on_ray(
    paths: Sequence[Path],
    *,
    model: dict[str, Any],
    classifier_file: Path,
    geometry: Any,
    draft: Draft | None,
    top_k: int,
    batch_size: int | None = None,
    workers: int | None = None,
    parquet_folder: Path | None = None,
) -> Iterator[Prediction]:
    """Classify on Ray Data, yielding predictions in input order.

    ``model``: keyword arguments of ``ZeroShotClassifier.from_pretrained``; ``classifier_file``: the classifier
    to score against; ``geometry``: the model's PIL resize-and-crop (``LoadedModel.pixels.geometry``).
    ``parquet_folder``: Ray's tasks write the results there as Parquet parts of up to ``PARQUET_PART_ROWS``
    rows, with the local engine's schema, and the predictions yielded carry only the path and any error.
    """
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise UsageError("--engine ray needs Ray: pip install 'ray[data]'") from e
    run = open_parquet_folder(parquet_folder) if parquet_folder is not None else 0
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # stderr is for clipzs's own diagnostics
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    plan = plan_actors(nodes, workers)
    import torch

    from clipzs.device import resolve_precision

    device = "cuda" if plan.num_gpus else "cpu"  # (the actors' device)
    resolve_precision(torch.device(device), model.get("precision", "auto"))
    scored = build_dataset(
        paths,
        plan=plan,
        model={**model, "device": device},
        classifier=classifier_file.read_bytes(),
        geometry=geometry,
        draft=draft,
        top_k=top_k,
        batch_size=batch_size or (GPU_BATCH_SIZE if plan.num_gpus else DEFAULT_BATCH_SIZE),
    )
    if parquet_folder is None:
        for row in scored.iter_rows():
            yield Prediction.from_dict(json.loads(row["record"]))
        return
    written = scored.map_batches(
        functools.partial(_write_part, folder=str(parquet_folder.resolve()), run=run),
        batch_size=PARQUET_PART_ROWS,
        num_cpus=TASK_CPUS,
    )
    for row in written.iter_rows():
        yield Prediction(row["path"], error=row["error"] or None)


def build_dataset(
    paths: Sequence[Path],
    *,
    plan: ActorPlan,
    model: dict[str, Any],
    classifier: bytes,
    geometry: Any,
    draft: Draft | None,
    top_k: int,
    batch_size: int,
) -> Any:
    """The Ray Dataset of scored images (columns ``index``, ``record``: the JSON Lines record), not yet run:
    decode tasks, then the pool of scoring actors."""
    import ray.data

    dataset = ray.data.from_items([{"index": i, "path": str(p)} for i, p in enumerate(paths)])
    decoded = dataset.map_batches(
        functools.partial(_decode, geometry=geometry, draft=draft),
        batch_size=batch_size,
        num_cpus=TASK_CPUS,
    )
    return decoded.map_batches(
        _Scorer,
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
        fn_constructor_kwargs={
            "model": model,
            "classifier": classifier,
            "top_k": top_k,
            "threads": plan.threads,
        },
    )
