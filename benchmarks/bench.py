"""clipzs against open_clip's own pipeline, side by side in one run, on the same model, weights and files.

    python benchmarks/bench.py                 # CPU, the full run (about 15 minutes on 2 cores)
    python benchmarks/bench.py --quick         # fewer images and repeats, for a first look (printed only)
    python benchmarks/bench.py --device cuda --models ViT-B-32,ViT-L-14 --small 4000 --phone 400

The corpus is made from real photos shipped in packages (scikit-image, scikit-learn), re-encoded as JPEGs at
ImageNet size (500x375) and phone size (4032x3024, with sensor-like grain so they compress like real photos).
Models are randomly initialised and saved to a checkpoint: weights do not change speed. It prints medians and
ratios, and writes them with the machine into a section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SMALL_SIZE = (500, 375)
PHONE_SIZE = (4032, 3024)


def base_photos() -> list[Image.Image]:
    """Colour photos from scikit-image and scikit-learn."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    names = ["astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field", "immunohistochemistry"]
    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in names]
    photos += [Image.fromarray(image) for image in load_sample_images().images]
    return photos


def make_corpus(folder: Path, count: int, size: tuple[int, int], grain: float, seed: int) -> list[Path]:
    """``count`` distinct JPEGs: random crops and flips of the photos, resized to ``size``, optional grain."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = base_photos()

    def one(i: int) -> Path:
        rng = np.random.default_rng([seed, i])
        photo = photos[i % len(photos)]
        scale = rng.uniform(0.6, 1.0)
        w, h = int(photo.width * scale), int(photo.height * scale)
        x, y = rng.integers(0, photo.width - w + 1), rng.integers(0, photo.height - h + 1)
        image = photo.crop((x, y, x + w, y + h)).resize(size, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if grain:
            noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, grain, (size[1], size[0], 3))
            image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        path = folder / f"img{i:05d}.jpg"
        image.save(path, quality=90)
        return path

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        return list(pool.map(one, range(count)))


def random_checkpoint(name: str, folder: Path) -> Path:
    import open_clip
    import torch

    path = folder / f"{name}-random.pt"
    if not path.exists():
        torch.manual_seed(0)
        logging.disable(logging.WARNING)  # open_clip warns that no pretrained weights were loaded: that is the point
        try:
            torch.save(open_clip.create_model(name).state_dict(), path)
        finally:
            logging.disable(logging.NOTSET)
    return path


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(runs: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median seconds of each run, the runs taking turns, so that a slow spell of the machine (other load,
    clock changes) falls on all of them alike rather than on one."""
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, spent in zip(runs, times, strict=True):
            start = time.perf_counter()
            run()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rows: list[tuple[str, str, str]] = []  # (measurement, value, ratio / note)

    def row(self, name: str, value: str, note: str = "") -> None:
        self.rows.append((name, value, note))
        print(f"{name:<58} {value:>18}  {note}", flush=True)

    def attempt(self, part: Callable[..., None], *args: Any) -> None:
        """Run one part; a part that fails is a row saying so, and the others still run and are written (a
        lent GPU's few minutes are not lost to one failure)."""
        try:
            part(*args)
        except Exception as e:  # noqa: BLE001 - reported in the results, with its traceback on stderr
            traceback.print_exc()
            self.row(f"{part.__name__} {' '.join(str(a) for a in args[:1])}: failed", type(e).__name__, str(e)[:200])

    # -- the text side -------------------------------------------------------------------------------------
    def text(self, model_name: str, checkpoint: Path) -> None:
        import open_clip
        import torch
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        from clipzs.api import ZeroShotClassifier
        from clipzs.prompts import load_templates

        classes = list(IMAGENET_CLASSNAMES[: self.args.classes])
        templates = load_templates("openai-80")
        zsc = ZeroShotClassifier.from_pretrained(model_name, str(checkpoint), device=self.args.device)
        tokenizer = open_clip.get_tokenizer(model_name)
        reference: list[torch.Tensor] = []

        def ref() -> None:
            reference[:] = [
                open_clip.build_zero_shot_classifier(
                    zsc.model.model, tokenizer, classes, templates, device=zsc.model.device
                ).cpu()
            ]

        t_ref, t_ours = interleaved([ref, lambda: zsc.build(classes, templates, use_cache=False)], self.args.repeats)
        assert zsc.classifier is not None
        diff = (zsc.classifier.weights - reference[0]).abs().max().item()
        n = len(classes) * len(templates)
        self.row(f"{model_name} text: open_clip build_zero_shot_classifier", f"{n / t_ref:.0f} prompts/s")
        self.row(
            f"{model_name} text: clipzs build",
            f"{n / t_ours:.0f} prompts/s",
            f"{t_ref / t_ours:.1f}x open_clip; max abs diff {diff:.1e}",
        )

    # -- the image side ------------------------------------------------------------------------------------
    def images(self, model_name: str, checkpoint: Path, paths: list[Path], label: str) -> None:
        import torch

        from clipzs.api import ZeroShotClassifier
        from clipzs.output import JsonlWriter

        zsc = ZeroShotClassifier.from_pretrained(model_name, str(checkpoint), device=self.args.device)
        zsc.build(["cat", "dog", "rocket", "coffee"], "simple", use_cache=False)
        model, preprocess, device = zsc.model.model, zsc.model.preprocess, zsc.model.device
        bs = self.args.batch_size
        sample = [preprocess(Image.open(p).convert("RGB")) for p in paths[:bs]]
        batch = torch.stack([sample[i % len(sample)] for i in range(bs)])

        def model_only() -> None:
            """The image encoder alone on already-preprocessed batches: the ceiling for end to end."""
            for start in range(0, len(paths), bs):
                zsc.model.encode_images(batch[: min(bs, len(paths) - start)])  # same autocast and copies
            if device.type == "cuda":
                torch.cuda.synchronize()

        def reference() -> None:
            """open_clip's README pipeline: PIL open -> preprocess -> encode_image, in batches, serially."""
            with torch.no_grad(), zsc_autocast(device):
                for start in range(0, len(paths), bs):
                    batch = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[start : start + bs]])
                    model.encode_image(batch.to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()

        def ours(device_decode: bool | None = None) -> None:
            with open(os.devnull, "w") as sink:
                writer = JsonlWriter(sink)
                predictions = zsc.classify_paths(
                    paths, batch_size=bs, use_cache=False, workers=self.args.workers, device_decode=device_decode
                )
                for prediction in predictions:
                    writer.write(prediction)

        model_only()  # warm-up: kernels, allocator, file cache
        n = len(paths)
        if device.type == "cuda":
            ours()  # warm-up: nvJPEG's first call initialises it
        t_model, t_ref, t_ours = interleaved([model_only, reference, ours], self.args.repeats)
        self.row(f"{model_name} {label}: model-only forward", f"{n / t_model:.1f} img/s")
        self.row(
            f"{model_name} {label}: open_clip reference pipeline",
            f"{n / t_ref:.1f} img/s",
            f"{t_model / t_ref:.0%} of model-only",
        )
        if device.type == "cuda":
            ours(device_decode=False)
            t_cpu_decode = median_seconds(lambda: ours(device_decode=False), self.args.repeats)
            self.row(
                f"{model_name} {label}: clipzs, decoding on CPU threads",
                f"{n / t_cpu_decode:.1f} img/s",
                f"{t_model / t_cpu_decode:.0%} of model-only",
            )
        self.row(
            f"{model_name} {label}: clipzs classify end to end",
            f"{n / t_ours:.1f} img/s",
            f"{t_model / t_ours:.0%} of model-only; {t_ref / t_ours:.2f}x reference",
        )

    def shapes(self, model_name: str, checkpoint: Path, paths: list[Path], label: str) -> None:
        """Other shapes of the CPU pipeline, in the library, against ``encode_paths`` as it is (RESULTS.md says why
        it was kept): lanes (two threads, each decoding a batch of 16, then encoding it with one torch thread of
        its own) and phases (a batch decoded on two threads, then encoded on both, nothing overlapped)."""
        import threading

        import torch

        from clipzs.api import ZeroShotClassifier
        from clipzs.images import load_image

        zsc = ZeroShotClassifier.from_pretrained(model_name, str(checkpoint), device="cpu")
        model, size, batch = zsc.model, zsc.model.image_size, 16
        threads = torch.get_num_threads()
        images = torch.randn(self.args.batch_size, 3, size, size)

        def decode(path: Path) -> object:
            return model.prepare(load_image(path, draft=model.draft))

        def model_only() -> None:
            for _ in range(max(1, len(paths) // self.args.batch_size)):
                model.encode_images(images)

        def pipeline() -> None:
            for _ in zsc.encode_paths(paths, use_cache=False):
                pass

        def lanes() -> None:
            batches = iter([paths[i : i + batch] for i in range(0, len(paths), batch)])
            lock = threading.Lock()

            def lane() -> None:
                torch.set_num_threads(1)  # this thread's own: torch keeps the count per thread
                while True:
                    with lock:
                        chunk = next(batches, None)
                    if chunk is None:
                        return
                    model.encode_prepared([decode(path) for path in chunk])  # type: ignore[misc]

            workers = [threading.Thread(target=lane) for _ in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            torch.set_num_threads(threads)

        def phases() -> None:
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                for i in range(0, len(paths), batch):
                    model.encode_prepared(list(pool.map(decode, paths[i : i + batch])))  # type: ignore[arg-type]

        model_only()  # warm-up
        t_model, t_pipeline, t_lanes, t_phases = interleaved([model_only, pipeline, lanes, phases], self.args.repeats)
        rate = max(1, len(paths) // self.args.batch_size) * self.args.batch_size / t_model
        self.row(f"{model_name} {label}: model-only forward", f"{rate:.1f} img/s")
        for name, seconds in (("pipeline (encode_paths)", t_pipeline), ("lanes", t_lanes), ("phases", t_phases)):
            value = len(paths) / seconds
            self.row(
                f"{model_name} {label}: CPU shape: {name}", f"{value:.1f} img/s", f"{value / rate:.0%} of model-only"
            )

    def stages(self, model_name: str, checkpoint: Path, paths: list[Path], label: str) -> None:
        """Where the time goes when JPEGs are decoded on the device, stage by stage over the same batches:
        reading and checking the files on threads, decoding and resizing on the device, the image encoder,
        then scoring and writing the results. End to end runs them overlapped; each stage alone is a ceiling."""
        import torch

        from clipzs.api import ZeroShotClassifier
        from clipzs.device_decode import FILES_PER_TASK, DeviceGeometry, decode_batch, read_jpeg
        from clipzs.images import ordered_map
        from clipzs.output import JsonlWriter

        zsc = ZeroShotClassifier.from_pretrained(model_name, str(checkpoint), device=self.args.device)
        zsc.build(["cat", "dog", "rocket", "coffee"], "simple", use_cache=False)
        assert zsc.model.pixels is not None
        geometry = DeviceGeometry.of(zsc.model.pixels.geometry)
        assert geometry is not None
        device, bs = zsc.model.device, self.args.batch_size
        workers = self.args.workers or min(32 if device.type == "cuda" else 8, os.cpu_count() or 1)

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()

        def read() -> list:
            """As ``encode_paths`` reads for the device: FILES_PER_TASK files per task on the decode threads."""
            chunks = [paths[i : i + FILES_PER_TASK] for i in range(0, len(paths), FILES_PER_TASK)]
            jpegs = [j for _, got in ordered_map(lambda c: [read_jpeg(p) for p in c], chunks, workers) for j in got]
            assert all(jpegs), "the corpus is plain JPEGs"
            return [jpegs[i : i + bs] for i in range(0, len(jpegs), bs)]

        batches = read()
        decoded: list = []

        def decode() -> None:
            decoded[:] = [decode_batch(batch, device, geometry) for batch in batches]
            sync()

        def encode() -> None:
            for pixels in decoded:
                zsc.model.encode_prepared(pixels)  # ends with the features on the CPU

        decode()
        features = [zsc.model.encode_prepared(pixels) for pixels in decoded]

        def score() -> None:
            with open(os.devnull, "w") as sink:
                writer = JsonlWriter(sink)
                for batch, rows in zip(batches, features, strict=True):
                    for prediction in zsc.predict([(j.path, row) for j, row in zip(batch, rows, strict=True)], 5):
                        writer.write(prediction)

        def read_serially() -> None:
            for path in paths:
                read_jpeg(path)

        encode()  # warm-up
        t_serial = median_seconds(read_serially, self.args.repeats)
        self.row(f"{model_name} {label}: read and check files, one thread", f"{len(paths) / t_serial:.1f} img/s")
        times = interleaved([read, decode, encode, score], self.args.repeats)
        total = sum(times)
        stages = (f"read and check files, {workers} threads", "decode and resize", "image encoder", "score and write")
        for stage, seconds in zip(stages, times, strict=True):
            self.row(
                f"{model_name} {label}: stage alone: {stage}",
                f"{len(paths) / seconds:.1f} img/s",
                f"{seconds / total:.0%} of the stages' sum",
            )

    def overlap(self, model_name: str, checkpoint: Path, paths: list[Path], label: str) -> None:
        """An experiment for the GPU (not yet how ``encode_paths`` works): JPEGs of batch n+1 decoded on a stream of
        their own while the model encodes batch n, against one after the other as now; rates and the largest
        difference of the features, which must be 0 (a missed wait between the streams would show there)."""
        import torch

        from clipzs.api import ZeroShotClassifier
        from clipzs.device import image_autocast
        from clipzs.device_decode import FILES_PER_TASK, DeviceGeometry, decode_batch, read_jpeg
        from clipzs.images import ordered_map

        zsc = ZeroShotClassifier.from_pretrained(model_name, str(checkpoint), device=self.args.device)
        model, device, bs = zsc.model, zsc.model.device, self.args.batch_size
        if device.type != "cuda" or model.pixels is None:
            self.row(f"{model_name} {label}: decode beside encode", "skipped", "needs CUDA")
            return
        geometry = DeviceGeometry.of(model.pixels.geometry)
        assert geometry is not None
        chunks = [paths[i : i + FILES_PER_TASK] for i in range(0, len(paths), FILES_PER_TASK)]
        jpegs = [j for _, got in ordered_map(lambda c: [read_jpeg(p) for p in c], chunks, 8) for j in got]
        batches = [jpegs[i : i + bs] for i in range(0, len(jpegs), bs)]

        @torch.inference_mode()
        def encode(pixels: list[torch.Tensor]) -> torch.Tensor:
            """As ``LoadedModel.encode_prepared``, but the features stay on the device: nothing waits for them."""
            assert model.pixels is not None
            with image_autocast(device, model.precision):
                features = model.model.encode_image(model.pixels.normalize(torch.stack(pixels))).float()
            return features / features.norm(dim=-1, keepdim=True)

        results: dict[str, list[torch.Tensor]] = {}

        def serial() -> None:
            results["serial"] = [encode(decode_batch(batch, device, geometry)).cpu() for batch in batches]

        side, compute = torch.cuda.Stream(device), torch.cuda.current_stream(device)

        def decode_aside(batch: list) -> list[torch.Tensor]:
            with torch.cuda.stream(side):  # its memory comes from the side stream's pool (decode_batch lets the
                pixels = decode_batch(batch, device, geometry)  # side stream's last resize finish first)
            compute.wait_stream(side)
            for tensor in pixels:
                tensor.record_stream(compute)  # not reused before the model has read it
            return pixels

        def overlapped() -> None:
            out, ahead = [], decode_aside(batches[0])
            for i in range(len(batches)):
                features = encode(ahead)  # queued on the GPU
                if i + 1 < len(batches):
                    ahead = decode_aside(batches[i + 1])  # the host waits for the decoder while the GPU encodes
                out.append(features.cpu())
            results["overlapped"] = out

        serial()
        overlapped()  # warm-up, both
        t_serial, t_overlapped = interleaved([serial, overlapped], self.args.repeats)
        gap = max(float((a - b).abs().max()) for a, b in zip(results["serial"], results["overlapped"], strict=True))
        self.row(f"{model_name} {label}: decode, then encode (as now)", f"{len(paths) / t_serial:.1f} img/s")
        self.row(
            f"{model_name} {label}: decode batch n+1 beside encoding batch n",
            f"{len(paths) / t_overlapped:.1f} img/s",
            f"{t_serial / t_overlapped:.2f}x; max feature difference {gap:.1e}",
        )

    # -- whole commands ------------------------------------------------------------------------------------
    def reclassify(self, model_name: str, checkpoint: Path, paths: list[Path]) -> None:
        """A folder classified once, then again with other labels: whole commands, and the library's phase."""
        from clipzs.api import ZeroShotClassifier

        folder = paths[0].parent
        base = [
            sys.executable,
            "-m",
            "clipzs",
            "classify",
            str(folder),
            "--model",
            model_name,
            "--pretrained",
            str(checkpoint),
            "--device",
            self.args.device,
            "-q",
            "-o",
            os.devnull,
        ]
        label_sets = ("cat,dog,rocket", "coffee,flower,astronaut,space")

        def commands(cache: str, served: bool) -> list[float]:
            env = {k: v for k, v in os.environ.items() if k != "CLIPZS_NO_SERVER"}
            env["CLIPZS_CACHE_DIR"] = str(self.work / cache)
            serve = [sys.executable, "-m", "clipzs", "serve"]
            if served:
                subprocess.run([*serve, "--detach"], env=env, check=True, capture_output=True)
            try:
                return [
                    median_seconds(lambda labels=labels: subprocess.run([*base, "-l", labels], env=env, check=True), 1)
                    for labels in label_sets
                ]
            finally:
                if served:
                    subprocess.run([*serve, "--stop"], env=env, check=True, capture_output=True)

        own = commands("cache-commands", served=False)
        served = commands("cache-served", served=True)
        os.environ["CLIPZS_CACHE_DIR"] = str(self.work / "cache-library")
        zsc = ZeroShotClassifier.from_pretrained(model_name, str(checkpoint), device=self.args.device)

        def classify(labels: list[str]) -> None:
            zsc.build(labels, "openai-7")
            for _ in zsc.classify_paths(paths, batch_size=self.args.batch_size, workers=self.args.workers):
                pass

        phases = [
            median_seconds(lambda labels=labels: classify(labels), 1)
            for labels in (["cat", "dog", "rocket"], ["coffee", "flower", "astronaut", "space"])
        ]
        n = len(paths)
        self.row(
            f"{model_name} re-classify {n} photos: first command",
            f"{own[0]:.1f} s",
            f"build + classify in the library: {phases[0]:.1f} s",
        )
        self.row(
            f"{model_name} re-classify: second command, other labels",
            f"{own[1]:.1f} s",
            f"{own[0] / own[1]:.1f}x faster; in the library {phases[1]:.2f} s, {phases[0] / phases[1]:.0f}x faster",
        )
        self.row(
            f"{model_name} re-classify with `clipzs serve`: first command (model not yet loaded)",
            f"{served[0]:.1f} s",
        )
        self.row(
            f"{model_name} re-classify with `clipzs serve`: second command, other labels",
            f"{served[1]:.2f} s",
            f"{served[0] / served[1]:.0f}x faster than the first; {own[0] / served[1]:.0f}x the first without a server",
        )

    def ray(self, model_name: str, checkpoint: Path, paths: list[Path]) -> None:
        """--engine ray on a local instance with 1 and 2 model actors, against the local engine: whole commands
        on all the photos and on half of them; the difference gives the rate once everything has started."""
        base = [
            sys.executable,
            "-m",
            "clipzs",
            "classify",
            "-",
            "-l",
            "cat,dog",
            "--model",
            model_name,
            "--pretrained",
            str(checkpoint),
            "--no-cache",
            "-q",
            "-o",
            os.devnull,
        ]
        half = paths[: len(paths) // 2]
        engines = {"local engine": ["--device", "cpu"]}
        engines |= {f"--engine ray, {n} worker(s)": ["--engine", "ray", "--workers", str(n)] for n in (1, 2)}
        for name, flags in engines.items():
            times = {
                len(chosen): median_seconds(
                    lambda chosen=chosen, flags=flags: subprocess.run(
                        [*base, *flags], input="".join(f"{p}\n" for p in chosen), text=True, check=True
                    ),
                    self.args.repeats,
                )
                for chosen in (half, paths)
            }
            rate = (len(paths) - len(half)) / max(times[len(paths)] - times[len(half)], 1e-9)
            self.row(
                f"{model_name} {name}, {len(half)} / {len(paths)} photos",
                f"{times[len(half)]:.1f} s / {times[len(paths)]:.1f} s",
                f"{rate:.1f} img/s for the second {len(paths) - len(half)} (start-up excluded)",
            )

    def startup(self) -> None:
        for flag in ("--help", "--version"):
            t = median_seconds(
                lambda flag=flag: subprocess.run(
                    [sys.executable, "-m", "clipzs", flag], capture_output=True, check=True
                ),
                5,
            )
            self.row(f"clipzs {flag}", f"{t:.2f} s")

    def memory(self, small: list[Path]) -> None:
        config = ROOT / "tests" / "models" / "rand-clip.json"
        import open_clip

        open_clip.add_model_config(config)
        checkpoint = random_checkpoint("rand-clip", self.work)
        rss = {}
        for count in (500, 5000):
            listing = "".join(f"{small[i % len(small)]}\n" for i in range(count))
            command = [
                sys.executable,
                "-m",
                "clipzs",
                "classify",
                "-",
                "-l",
                "cat,dog",
                "--model-config",
                str(config),
                "--pretrained",
                str(checkpoint),
                "--no-cache",
                "-q",
                "--device",
                "cpu",
            ]
            # A small wrapper process measures its child: a child forked from this big process directly
            # would count this process's pages in its peak until it execs.
            out = subprocess.run(
                [sys.executable, "-c", RSS_WRAPPER, *command], input=listing, text=True, capture_output=True, check=True
            )
            rss[count] = int(out.stdout.split()[-1]) / 1024  # KiB on Linux
        self.row("peak RSS, 500 images (small model)", f"{rss[500]:.0f} MB")
        self.row("peak RSS, 5000 images (small model)", f"{rss[5000]:.0f} MB", f"+{rss[5000] - rss[500]:.0f} MB")

    def precisions(self, model_name: str, checkpoint: Path, small: list[Path], phone: list[Path]) -> None:
        """CPU bf16 and int8 against fp32: the image encoder alone, classify end to end, top-1 agreement."""
        import torch

        from clipzs.api import ZeroShotClassifier
        from clipzs.output import JsonlWriter

        fp32 = ZeroShotClassifier.from_pretrained(model_name, str(checkpoint), device="cpu")
        fp32.build(["cat", "dog", "rocket", "coffee"], "simple", use_cache=False)
        size = fp32.model.image_size
        batch = torch.randn(self.args.batch_size, 3, size, size)
        fp32.model.encode_images(batch)
        t_fp32 = median_seconds(lambda: fp32.model.encode_images(batch), self.args.repeats)
        reference = fp32.model.encode_images(batch)
        for precision in ("bf16", "int8"):
            zsc = ZeroShotClassifier(fp32.model.with_precision(precision), fp32.classifier)
            encode = zsc.model.encode_images
            encode(batch)
            t_encoder = median_seconds(lambda: encode(batch), self.args.repeats)  # noqa: B023 - used at once
            cos = torch.nn.functional.cosine_similarity(reference, zsc.model.encode_images(batch)).min().item()
            self.row(
                f"{model_name} {precision} image encoder",
                f"{len(batch) / t_encoder:.1f} img/s",
                f"{t_fp32 / t_encoder:.2f}x fp32; min cosine to fp32 {cos:.4f}",
            )
            for paths, label in ((small, f"{SMALL_SIZE[0]}x{SMALL_SIZE[1]}"), (phone, "12 MP")):

                def ours(zsc: ZeroShotClassifier = zsc, paths: list[Path] = paths) -> None:
                    with open(os.devnull, "w") as sink:
                        writer = JsonlWriter(sink)
                        for prediction in zsc.classify_paths(paths, batch_size=self.args.batch_size, use_cache=False):
                            writer.write(prediction)

                ours()
                t_ours = median_seconds(ours, self.args.repeats)
                rate, own, full = len(paths) / t_ours, len(batch) / t_encoder, len(batch) / t_fp32
                self.row(
                    f"{model_name} {label}: clipzs classify end to end, {precision}",
                    f"{rate:.1f} img/s",
                    f"{rate / own:.0%} of {precision} model-only; {rate / full:.2f}x fp32 model-only",
                )
            agreement = tiny_clip_agreement(precision)
            self.row(f"tiny-clip {precision} top-1 agreement with fp32", f"{agreement:.1%}")


RSS_WRAPPER = (
    "import resource, subprocess, sys; "
    "subprocess.run(sys.argv[1:], stdin=sys.stdin, stdout=subprocess.DEVNULL, check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def tiny_clip_agreement(precision: str, per_class: int = 20) -> float:
    """Top-1 agreement of a precision with fp32 on the repo's trained test model, over freshly drawn shapes."""
    sys.path.insert(0, str(ROOT))
    from clipzs.api import ZeroShotClassifier
    from tests.tinyclip.shapes import CLASSES, draw

    rng = np.random.default_rng(99)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(per_class * len(CLASSES)):
            path = Path(tmp, f"{i}.png")
            draw(CLASSES[i % len(CLASSES)], rng).save(path)
            paths.append(path)
        tiny = ROOT / "tests" / "tinyclip"
        zsc = ZeroShotClassifier.from_pretrained(
            None, str(tiny / "tiny-clip.safetensors"), model_config=tiny / "tiny-clip.json", device="cpu"
        )
        zsc.build(CLASSES, "simple", use_cache=False)
        fp32 = [p.label for p in zsc.classify_paths(paths, use_cache=False)]
        zsc.model = zsc.model.with_precision(precision)
        other = [p.label for p in zsc.classify_paths(paths, use_cache=False)]
    return sum(a == b for a, b in zip(fp32, other, strict=True)) / len(paths)


def zsc_autocast(device: object) -> object:
    from clipzs.device import image_autocast, resolve_precision

    return image_autocast(device, resolve_precision(device))  # type: ignore[arg-type]


def machine() -> str:
    import open_clip
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {os.cpu_count()} cores{gpu}; Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), open_clip {open_clip.__version__}, Pillow {Image.__version__}"
    )


def write_results(path: Path, section: str, text: str) -> None:
    begin, end = f"<!-- begin {section} -->", f"<!-- end {section} -->"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if begin in old:  # replaced where it stands
        head, rest = old.split(begin, 1)
        path.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}", encoding="utf-8")
    else:
        path.write_text(old.rstrip("\n") + f"\n\n{begin}\n{text}\n{end}\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="ViT-B-32", help="comma-separated open_clip model names")
    parser.add_argument("--small", type=int, default=300, help="ImageNet-size JPEGs")
    parser.add_argument("--phone", type=int, default=120, help="12-MP JPEGs")
    parser.add_argument("--classes", type=int, default=10, help="ImageNet classes x 80 templates for the text side")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default="text,images,reclassify,precision,memory", help="what to measure")
    parser.add_argument("--section", default=None, help="RESULTS.md section name [default: the device]")
    parser.add_argument(
        "--out", type=Path, default=None, help="the results file [default: RESULTS.md, except with --quick: none]"
    )
    args = parser.parse_args()
    if args.quick:
        args.small, args.phone, args.classes, args.repeats = 64, 8, 10, 1
    warnings.filterwarnings("ignore")
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="clipzs-bench-") as tmp:
        work = Path(tmp)
        os.environ["CLIPZS_CACHE_DIR"] = str(work / "cache")
        started = time.perf_counter()
        small = make_corpus(work / "small", args.small, SMALL_SIZE, grain=0, seed=1)
        phone = make_corpus(work / "phone", args.phone, PHONE_SIZE, grain=6, seed=2)
        megabytes = sum(p.stat().st_size for p in phone) / len(phone) / 1e6
        print(
            f"corpus: {len(small)} x {SMALL_SIZE}, {len(phone)} x {PHONE_SIZE} ({megabytes:.1f} MB each) "
            f"in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        bench = Bench(args, work)
        info = machine()
        print(info, flush=True)
        bench.startup()
        for name in args.models.split(","):
            checkpoint = random_checkpoint(name, work)
            size = f"{SMALL_SIZE[0]}x{SMALL_SIZE[1]}"
            if "text" in parts:
                bench.attempt(bench.text, name, checkpoint)
            if "images" in parts:
                bench.attempt(bench.images, name, checkpoint, small, size)
                bench.attempt(bench.images, name, checkpoint, phone, "12 MP")
            if "stages" in parts:
                bench.attempt(bench.stages, name, checkpoint, small, size)
            if "shapes" in parts and args.device == "cpu":
                bench.attempt(bench.shapes, name, checkpoint, phone, "12 MP")
            if "overlap" in parts:
                bench.attempt(bench.overlap, name, checkpoint, small, size)
            if "reclassify" in parts:
                bench.attempt(bench.reclassify, name, checkpoint, small)
            if "ray" in parts:
                bench.attempt(bench.ray, name, checkpoint, small)
            if "precision" in parts and args.device == "cpu":
                bench.attempt(bench.precisions, name, checkpoint, small, phone)
        if "memory" in parts and args.device == "cpu":
            bench.attempt(bench.memory, small)
        table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in bench.rows)
        command = " ".join(["python benchmarks/bench.py", *sys.argv[1:]])
        text = (
            f"## {args.section or args.device} ({time.strftime('%Y-%m-%d')})\n\n`{command}`\n\n"
            f"Machine: {info}\n\nCorpus: {len(small)} ImageNet-size and {len(phone)} 12-MP JPEGs "
            f"({megabytes:.1f} MB each); batch size {args.batch_size}; medians of {args.repeats}.\n\n"
            f"| measurement | value | ratio |\n| --- | --- | --- |\n{table}"
        )
        print(f"\n{text}\n")
        out = args.out or (None if args.quick else ROOT / "benchmarks" / "RESULTS.md")
        if out is not None:  # a quick look's rough figures do not replace a full run's
            write_results(out, args.section or args.device, text)
            print(f"wrote {out}")


if __name__ == "__main__":
    main()
