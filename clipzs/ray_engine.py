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
import os
import socket
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
    GPUs. CPU only: ``workers`` actors (default one per node), no more on a node than it has CPU slots (a usage
    error); the actors of a node share its CPU slots but a reserve for the decode and write tasks (an eighth, at
    least two tasks' worth), and each runs as many torch threads as the slots it holds, rounded up.
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
    if per_node > smallest:
        raise UsageError(
            f"--workers {actors} would put {per_node} actors on a node of {smallest:g} CPUs: a CPU actor runs at "
            "least one thread and holds a copy of the model, so actors beyond the cores only add memory and "
            f"start-up time: use --workers {len(cpus) * max(1, math.floor(smallest))} or fewer"
        )
    room = smallest - max(2 * TASK_CPUS, smallest / 8)
    num_cpus = math.floor(room / per_node * 1000) / 1000  # rounded down, so that per_node of them fit
    if num_cpus == TASK_CPUS:
        num_cpus -= 0.001  # the same request as the tasks' would let Ray fuse decoding into the actors
    return ActorPlan(actors, num_cpus, 0.0, max(1, math.ceil(num_cpus)))


ACTOR_DEVICES = ("auto", "cpu", "cuda")
"""What ``--device`` may ask of the actors: Ray places them on GPUs itself, so no ``cuda:N``."""

CONNECT_TIMEOUT_S = 5.0
"""How long to wait for the head node that ``RAY_ADDRESS`` names to answer before saying that nothing does:
Ray itself retries an unreachable address for many minutes."""


def require_ray() -> None:
    """Ray Data must be importable: a usage error naming the extra to install, before anything is loaded."""
    try:
        import ray.data  # noqa: F401
    except ImportError as e:
        raise UsageError("--engine ray needs Ray: pip install 'ray[data]'") from e


def check_actor_device(device: str) -> None:
    """A ``--device`` the actors cannot be placed on is a usage error, before Ray starts."""
    if device not in ACTOR_DEVICES:
        raise UsageError(
            f"--device {device} with --engine ray: Ray's actors run on the CPU or on the GPUs Ray gives them: "
            "use --device auto, cpu or cuda"
        )


def actor_nodes(nodes: Sequence[dict[str, float]], device: str) -> list[dict[str, float]]:
    """The live nodes' resources as the actors may use them: ``auto`` the cluster's GPUs where it has some, else
    its CPUs; ``cpu`` its CPUs only; ``cuda`` its GPUs, which it must have."""
    check_actor_device(device)
    if device == "cpu":
        return [{name: amount for name, amount in node.items() if name != "GPU"} for node in nodes]
    if device == "cuda" and not any(node.get("GPU") for node in nodes):
        raise UsageError("--device cuda was asked for, but the Ray cluster has no GPUs: use --device cpu or auto")
    return list(nodes)


def check_ray_address(address: str | None, connect: Any = socket.create_connection) -> None:
    """A ``RAY_ADDRESS`` of ``host:port`` must answer within ``CONNECT_TIMEOUT_S``; Ray itself would retry for
    many minutes. ``auto``, ``local``, ``ray://`` addresses and none are left to Ray."""
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"RAY_ADDRESS={address} is not a Ray address: give HOST:PORT of the head node, or auto")
    try:
        connect((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e)).lower()
        raise UsageError(
            f"RAY_ADDRESS={address}: no Ray cluster answers there ({reason}): start it (ray start --head), correct "
            "RAY_ADDRESS, or unset it for a local Ray instance"
        ) from None


def join_ray() -> None:
    """Join the cluster ``RAY_ADDRESS`` names (or one ``ray start`` began on this machine), else start a local
    instance; a cluster that cannot be joined is a usage error naming the address, not Ray's traceback."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    check_ray_address(address)
    try:
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError) as e:
        if address == "auto":
            raise UsageError(
                "RAY_ADDRESS=auto, but no Ray cluster runs on this machine: start one (ray start --head), or unset "
                "RAY_ADDRESS for a local Ray instance"
            ) from None
        where = f"the Ray cluster at RAY_ADDRESS={address}" if address else "Ray"
        raise UsageError(f"cannot join {where}: {e}") from None


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
    device: str = "auto",
) -> Iterator[Prediction]:
    """Classify on Ray Data: the predictions in input order, as an iterator that runs the work. Ray is joined,
    and the device, the precision and the actors checked, before this returns: before the caller opens its output.

    ``model``: keyword arguments of ``ZeroShotClassifier.from_pretrained``; ``classifier_file``: the classifier
    to score against; ``geometry``: the model's PIL resize-and-crop (``LoadedModel.pixels.geometry``).
    ``parquet_folder``: Ray's tasks write the results there as Parquet parts of up to ``PARQUET_PART_ROWS``
    rows, with the local engine's schema, and the predictions yielded carry only the path and any error.
    ``device``: where the actors run (``actor_nodes``).
    """
    require_ray()
    check_actor_device(device)
    import ray
    import ray.data

    run = open_parquet_folder(parquet_folder) if parquet_folder is not None else 0
    if not ray.is_initialized():
        join_ray()
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # stderr is for clipzs's own diagnostics
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    plan = plan_actors(actor_nodes(nodes, device), workers)
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
    return _results(scored, parquet_folder, run)


def _results(scored: Any, parquet_folder: Path | None, run: int) -> Iterator[Prediction]:
    """Run the dataset: the predictions in input order, or, writing Parquet parts, each image's path and error."""
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
