"""Train the tiny test CLIP model on synthetic "colour shape" images.

Usage (from the repository root): ``python tests/tinyclip/train.py``

Deterministically (seeded) remakes ``tests/tinyclip/tiny-clip.safetensors``
from ``tiny-clip.json`` with open_clip's own model, transforms, tokenizer and
``ClipLoss``, then prints zero-shot top-1 accuracy on freshly drawn images.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tinyclip.shapes import CLASSES, ENSEMBLE, caption, draw  # noqa: E402

CONFIG = HERE / "tiny-clip.json"
CHECKPOINT = HERE / "tiny-clip.safetensors"
MODEL_NAME = CONFIG.stem  # "tiny-clip"

SEED = 0
EVAL_SEED = 12345
STEPS = 500
WARMUP = 40
BATCH = 192
LR = 2e-3
WEIGHT_DECAY = 0.1
EVAL_IMAGES = 480


Transform = Callable[[object], torch.Tensor]


def lr_at(step: int) -> float:
    """Linear warmup then cosine decay to zero."""
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, STEPS - WARMUP)
    return 0.5 * LR * (1 + math.cos(math.pi * progress))


def batch(rng: np.random.Generator, preprocess: Transform, n: int) -> tuple[torch.Tensor, list[str], list[int]]:
    """Draw ``n`` random (preprocessed image, caption, class index) triples."""
    labels = rng.integers(len(CLASSES), size=n).tolist()
    images = torch.stack([preprocess(draw(CLASSES[i], rng)) for i in labels])
    return images, [caption(CLASSES[i], rng) for i in labels], labels


def param_groups(model: torch.nn.Module) -> list[dict[str, object]]:
    """AdamW groups: no weight decay on gains, biases, embeddings and the logit scale."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        skip = p.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]


def train(model: open_clip.CLIP, preprocess: Transform, tokenizer: Callable[[list[str]], torch.Tensor]) -> None:
    """Train ``model`` in place with the CLIP contrastive loss."""
    rng = np.random.default_rng(SEED)
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(param_groups(model), lr=LR, betas=(0.9, 0.98), eps=1e-6)
    model.train()
    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        images, texts, _ = batch(rng, preprocess, BATCH)
        image_features, text_features, logit_scale = model(images, tokenizer(texts))
        loss = loss_fn(image_features, text_features, logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == STEPS - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  lr {lr_at(step):.2e}", flush=True)


@torch.no_grad()
def zero_shot_accuracy(
    model: open_clip.CLIP,
    preprocess: Transform,
    tokenizer: Callable[[list[str]], torch.Tensor],
    templates: Sequence[str],
) -> float:
    """Top-1 zero-shot accuracy on ``EVAL_IMAGES`` fresh images (balanced over the classes)."""
    model.eval()
    rng = np.random.default_rng(EVAL_SEED)
    labels = [i % len(CLASSES) for i in range(EVAL_IMAGES)]
    images = torch.stack([preprocess(draw(CLASSES[i], rng)) for i in labels])
    weights = open_clip.build_zero_shot_classifier(model, tokenizer, CLASSES, templates, num_classes_per_batch=None)
    predictions = (model.encode_image(images, normalize=True) @ weights).argmax(dim=1)
    return (predictions == torch.tensor(labels)).float().mean().item()


def main() -> None:
    """Train, save the fp16 checkpoint, reload it into a fresh fp32 model and report accuracy."""
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    open_clip.add_model_config(CONFIG)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)

    start = time.perf_counter()
    train(model, preprocess, tokenizer)
    minutes = (time.perf_counter() - start) / 60

    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(CHECKPOINT))

    fresh, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME)
    open_clip.load_checkpoint(fresh, str(CHECKPOINT))
    single = zero_shot_accuracy(fresh, preprocess, tokenizer, ["a photo of a {}."])
    ensemble = zero_shot_accuracy(fresh, preprocess, tokenizer, ENSEMBLE)
    size_mb = CHECKPOINT.stat().st_size / 2**20
    print(f"trained {STEPS} steps x {BATCH} in {minutes:.1f} min; saved {CHECKPOINT.name} ({size_mb:.1f} MiB)")
    print(f"zero-shot top-1 on {EVAL_IMAGES} images: 1 template {single:.1%}, 7-template ensemble {ensemble:.1%}")


if __name__ == "__main__":
    main()
