"""Loading open_clip models (hub tags, local checkpoints, custom configs) and encoding with them.

Everything that touches the network is here, and it fails within seconds when the hub cannot be reached.
Encoders return L2-normalised float32 features on the CPU.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import copy
import dataclasses
import difflib
import functools
import logging
import os
import re
import socket
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipzs.cache import file_sha256, file_version, key_of
from clipzs.config import DEFAULT_MODEL, DEFAULT_PRETRAINED
from clipzs.device import cache_tag, image_autocast, resolve_device, resolve_precision
from clipzs.errors import ModelError, UsageError
from clipzs.images import Draft, resized_crop
from clipzs.prompts import is_text

logger = logging.getLogger("clipzs")
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
TEXT_BATCH = 256
PROBE_TIMEOUT_S = 3.0


@dataclass
class LoadedModel:
    """An open_clip model in eval mode with what it needs to encode: preprocess, tokenizer, temperature."""

    model: Any
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    name: str
    pretrained: str
    fingerprint: str
    """Identifies the model: its weights ('name:tag' for a pretrained tag, 'sha256:...' of a local checkpoint file,
    'hf-hub:...@digest' of an hf-hub: repository's cached files) and, after '|built:', a digest of the name,
    config and options it was built from."""
    device: torch.device
    model_config: str | None = None
    pixels: PixelPipeline | None = None
    """The preprocess split at ToTensor, when it has the usual shape (``split_preprocess``)."""
    precision: str = "fp32"
    """How the image tower computes: fp32, fp16 or bf16 (autocast on CUDA, cast weights on the CPU), or int8
    (see ``with_precision``)."""
    built_from: dict[str, Any] | None = None
    """The name, config and options the fingerprint's '|built:' part is a digest of."""

    def fingerprint_named(self, name: str) -> str | None:
        """The fingerprint this model would have under another name, built from the same config and options, with
        the same weights: open_clip builds a model from its config, so the name alone changes nothing (a config
        copied to a file of another name). None where the name is part of what the weights are (a pretrained tag's
        'name:tag', an hf-hub: repository)."""
        weights = self.fingerprint.split("|built:")[0]
        if self.built_from is None or not weights.startswith("sha256:") or name.startswith("hf-hub:"):
            return None
        return fingerprint_of(weights, {**self.built_from, "model": name})

    @property
    def cache_tag(self) -> str:
        """The precision as the image-feature cache key names it, since it changes the numbers."""
        return cache_tag(self.device, self.precision)

    @functools.cached_property
    def feature_width(self) -> int:
        """How many numbers a feature vector has: asked of the text tower once (open_clip's towers name it
        in different places)."""
        return int(self.encode_text([""]).shape[1])

    def with_precision(self, requested: str) -> LoadedModel:
        """This model encoding images at another precision (``device.PRECISIONS``; auto is the device's default).

        On the CPU, bf16 casts the image tower's weights to bfloat16 and int8 quantises its linear layers
        (PyTorch dynamic quantisation: weights once, activations per batch); on CUDA both fp16 and bf16 are
        autocast. The result is a copy that shares the text tower, which stays fp32, so classifiers and their
        cache are unchanged; the model given is left as it is (``clipzs serve`` hands it to later commands).
        benchmarks/RESULTS.md records the speed-ups and the top-1 agreement with fp32.
        """
        precision = resolve_precision(self.device, requested)
        if precision == self.precision:
            return self
        if self.device.type != "cpu":
            return dataclasses.replace(self, precision=precision)  # autocast: the weights stay as they are
        if self.precision != "fp32":
            raise ValueError(f"convert the fp32 model, not its {self.precision} copy")
        model = copy.copy(self.model)  # shares every layer but the image tower, replaced below
        model._modules = dict(model._modules)
        if precision == "int8":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PyTorch marks eager-mode quantisation as moving to torchao
                model.visual = torch.ao.quantization.quantize_dynamic(
                    self.model.visual, {torch.nn.Linear}, dtype=torch.qint8
                )
        else:
            model.visual = _cast_copy(self.model.visual, torch.bfloat16)
        return dataclasses.replace(self, model=model, precision=precision)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    @property
    def logit_bias(self) -> float | None:
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else float(bias.item())

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(max(size) if isinstance(size, (tuple, list)) else size)

    @functools.cached_property
    def draft(self) -> Draft | None:
        """How large JPEGs may be decoded at reduced scale for this model (``images.load_image``): where its
        preprocess starts with a bicubic resize of the shorter side or of both to one size; None otherwise."""
        from torchvision.transforms import InterpolationMode, Resize

        geometry = self.pixels.geometry if self.pixels else self.preprocess
        steps = list(getattr(geometry, "transforms", []))
        resize = steps[0] if steps else None
        if (
            not isinstance(resize, Resize)
            or resize.interpolation != InterpolationMode.BICUBIC
            or resize.max_size is not None
        ):
            return None
        size = [resize.size] if isinstance(resize.size, int) else list(resize.size)
        if len(size) == 1:
            return Draft(int(size[0]))
        return Draft(int(size[0]), squash=True) if size[0] == size[1] else None

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Features [N, D] of the texts, in fp32 whatever the device."""
        return self.encode_tokens(self.tokenize(texts))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids [N, context length] of the texts, each cut at the model's context length."""
        return self.tokenizer(list(texts))

    @torch.inference_mode()
    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Features [N, D] of tokenized texts, in fp32 whatever the device.

        Prompts are sorted by length so that each batch can stop at its longest prompt (see
        ``encode_tokens_trimmed``), then put back in order.
        """
        trim = can_trim_tokens(self.model)
        order = torch.argsort(last_token_index(tokens), stable=True)
        features = torch.empty(0)
        for start in range(0, len(tokens), TEXT_BATCH):
            rows = order[start : start + TEXT_BATCH]
            batch = tokens[rows].to(self.device)
            out = encode_tokens_trimmed(self.model, batch) if trim else self.model.encode_text(batch, normalize=True)
            out = out.float().cpu()
            if features.numel() == 0:
                features = torch.empty(len(tokens), out.shape[1])
            features[rows] = out
        return features

    def prepare(self, image: Any) -> np.ndarray | torch.Tensor:
        """The decode-thread part of preprocessing: resized, cropped uint8 pixels [H, W, 3] when the
        preprocess splits (the arithmetic then runs batched on the device), else the full preprocess."""
        if self.pixels is None:
            return self.preprocess(image)
        return np.asarray(self.pixels.geometry(image))

    def encode_prepared(self, items: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
        """Features [N, D] of images from ``prepare`` (or uint8 pixels [H, W, 3] decoded on the device)."""
        if self.pixels is None:
            return self.encode_images(torch.stack(list(items)))  # type: ignore[arg-type]
        if all(isinstance(x, np.ndarray) for x in items):
            pixels = torch.from_numpy(np.stack(items))
            if self.device.type == "cuda":
                pixels = pixels.pin_memory()  # page-locked, so the copy runs asynchronously
        else:
            on_device = [
                torch.from_numpy(np.array(x)).to(self.device) if isinstance(x, np.ndarray) else x for x in items
            ]
            pixels = torch.stack(on_device)
        pixels = pixels.to(self.device, non_blocking=True)
        return self.encode_images(self.pixels.normalize(pixels))

    @torch.inference_mode()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        """Features [N, D] of a batch of preprocessed images [N, 3, H, W]."""
        if self.device.type == "cuda" and batch.device.type == "cpu":
            batch = batch.pin_memory()  # page-locked, so the copy below runs asynchronously
        batch = batch.to(self.device, non_blocking=True)
        if self.precision == "bf16" and self.device.type == "cpu":
            batch = batch.to(torch.bfloat16)  # the weights' dtype (``with_precision``)
        with image_autocast(self.device, self.precision):
            features = self.model.encode_image(batch)
        features = features.float()
        return (features / features.norm(dim=-1, keepdim=True)).cpu()


@dataclass(frozen=True)
class PixelPipeline:
    """open_clip's preprocess split in two: the PIL geometry (resize, crop, mode) runs on decode threads,
    which release the GIL; ToTensor and Normalize run batched on the device, on uint8 pixels (a quarter of
    the bytes to copy). Elementwise the arithmetic is the same, so the result is the same, bit for bit."""

    geometry: Callable[[Any], Any]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, C] -> float32 [N, C, H, W], as ToTensor then Normalize compute it."""
        images = pixels.permute(0, 3, 1, 2).float().div(255)
        mean = torch.as_tensor(self.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return images.sub(mean).div(std)


@dataclass(frozen=True)
class PixelGeometry:
    """The preprocess's PIL steps (a torchvision Compose: resize, crop, mode), run as they are, but for an image
    far longer than wide when they start with a resize of the shorter side and a centre crop: that is resized
    only where the crop keeps it (``images.resized_crop``), not whole, which could take gigabytes."""

    steps: Any

    @property
    def transforms(self) -> list[Any]:
        """The steps, as ``DeviceGeometry.of`` and ``LoadedModel.draft`` read them."""
        return list(self.steps.transforms)

    def __call__(self, image: Any) -> Any:
        cropped = self._resized_crop(image)
        if cropped is None:
            return self.steps(image)
        for step in self.transforms[2:]:
            cropped = step(cropped)
        return cropped

    def _resized_crop(self, image: Any) -> Any:
        """The first two steps' result by ``images.resized_crop``, or None where the steps run as they are."""
        from PIL import Image
        from torchvision.transforms import CenterCrop, Resize
        from torchvision.transforms.functional import pil_modes_mapping

        steps = self.transforms
        if len(steps) < 2 or not isinstance(image, Image.Image):
            return None
        resize, crop = steps[0], steps[1]
        if not isinstance(resize, Resize) or not isinstance(crop, CenterCrop) or resize.max_size is not None:
            return None
        sizes = [resize.size] if isinstance(resize.size, int) else list(resize.size)
        if len(sizes) != 1:
            return None  # both sides resized to a size of their own: nothing grows
        resample = Image.Resampling(pil_modes_mapping[resize.interpolation])
        return resized_crop(image, int(sizes[0]), (int(crop.size[0]), int(crop.size[1])), resample)


def split_preprocess(preprocess: Any) -> PixelPipeline | None:
    """Split a torchvision Compose ending in ToTensor, Normalize; None for any other shape."""
    from torchvision.transforms import Compose, Normalize, ToTensor

    steps = list(getattr(preprocess, "transforms", []))
    if len(steps) < 2 or not isinstance(steps[-2], ToTensor) or not isinstance(steps[-1], Normalize):
        return None
    return PixelPipeline(PixelGeometry(Compose(steps[:-2])), tuple(steps[-1].mean), tuple(steps[-1].std))


def _cast_copy(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``module`` with its floating-point parameters and buffers in ``dtype``, as ``.to(dtype)``
    would give, without first copying them at their own precision."""
    memo: dict[int, Any] = {}
    for param in module.parameters():
        if param.is_floating_point():
            memo[id(param)] = torch.nn.Parameter(param.detach().to(dtype), requires_grad=False)
    for buffer in module.buffers():
        if buffer.is_floating_point():
            memo[id(buffer)] = buffer.detach().to(dtype)
    return copy.deepcopy(module, memo)


def last_token_index(tokens: torch.Tensor) -> torch.Tensor:
    """Per row, the index of the last non-padding token (padding is id 0, as open_clip's tokenizers pad)."""
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    return (positions * (tokens != 0)).amax(dim=1)


def can_trim_tokens(model: Any) -> bool:
    """Whether the text tower is open_clip's causal transformer pooled at a token inside the prompt.

    With a causal mask, no position attends to a later one, so the padding after a batch's longest prompt
    cannot change the features pooled at its end-of-text (or first) token, and need not be computed.
    Towers without a causal mask (SigLIP's, HF text models) or pooled at the last position are left alone.
    """
    import open_clip

    return (
        isinstance(model, open_clip.CLIP)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos", "first")
    )


def encode_tokens_trimmed(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text``, computed only up to the batch's longest prompt."""
    from open_clip.transformer import text_global_pool

    length = int(last_token_index(tokens).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = (
            model.text_projection(x)
            if isinstance(model.text_projection, torch.nn.Linear)
            else x @ model.text_projection
        )
    return torch.nn.functional.normalize(x, dim=-1)


_resident: collections.OrderedDict[tuple[Any, ...], dict[str, LoadedModel]] | None = None
"""Models kept loaded for later commands, most recently used last (``keep_loaded``), each with its copies at
other precisions (``LoadedModel.with_precision``), keyed by precision; None: keep nothing."""
_resident_limit = 0


def keep_loaded(models: int) -> None:
    """Keep up to ``models`` models loaded: ``load_model`` then hands out the same model again while its
    name, weights file, config file and device are unchanged, and keeps a copy made at another precision with
    it (without counting it). For ``clipzs serve``, which runs many commands in one process; 0 turns it off."""
    global _resident, _resident_limit
    _resident, _resident_limit = (collections.OrderedDict() if models > 0 else None), models


def load_model(
    name: str | None,
    pretrained: str | None,
    *,
    model_config: str | os.PathLike[str] | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> LoadedModel:
    """Create an open_clip model with its weights, in eval mode on the resolved device.

    ``pretrained`` is an open_clip tag (downloaded from the hub on first use, then read from its cache) or
    the path of a local checkpoint (a state dict saved with torch.save, or safetensors). ``model_config`` is
    a custom open_clip model config JSON; the model is then named after the file unless ``name`` is given.
    With neither a name nor a config, the model is clipzs's default, and without ``pretrained`` so are its
    weights; any other model needs its weights named (a checkpoint needs its model named: open_clip would
    resize another model's weights to fit the default one, and compute other numbers without a word).
    ``precision``: how the image tower computes (``LoadedModel.with_precision``).
    """
    if not name and model_config is None:
        if pretrained and Path(pretrained).expanduser().is_file():
            raise UsageError(
                f"{pretrained} is a checkpoint file: name its model with --model (or --model-config); the default "
                f"model, {DEFAULT_MODEL}, takes only its own weights"
            )
        name = DEFAULT_MODEL
    if pretrained is None:
        if (model_config is None and name in (DEFAULT_MODEL, None)) or str(name).startswith("hf-hub:"):
            pretrained = DEFAULT_PRETRAINED  # (an hf-hub: model's weights are in its repository)
        else:
            if model_config is None and name:
                check_model_name(name)  # a slip of the name is the mistake to report first
            model = name or Path(model_config or "").stem
            if model_config is not None:  # (a config of one's own has no pretrained tags to list)
                raise UsageError(f"{model} (--model-config {model_config}) needs its weights: --pretrained CHECKPOINT")
            raise UsageError(
                f"{model} needs its weights: --pretrained TAG (`clipzs models {model}` lists its tags) or a "
                "checkpoint file"
            )
    if _resident is None:
        return _load_model(name, pretrained, model_config=model_config, device=device).with_precision(precision)
    weights = _file_state(pretrained)  # a file is known by what it resolves to, however it is written
    key = (name, pretrained if weights is None else "", device, weights, _file_state(model_config))
    versions = _resident.get(key)
    if versions is None:
        versions = {}
        _remember(versions, lambda: _load_model(name, pretrained, model_config=model_config, device=device))
        _resident[key] = versions
        while len(_resident) > _resident_limit:
            _resident.popitem(last=False)  # a model goes with its copies at other precisions
    _resident.move_to_end(key)
    base = next(iter(versions.values()))  # the model as loaded; the others are copies of it
    wanted = resolve_precision(base.device, precision)
    return versions.get(wanted) or _remember(versions, lambda: base.with_precision(precision))  # casts take seconds


def _remember(versions: dict[str, LoadedModel], make: Callable[[], LoadedModel]) -> LoadedModel:
    """Make a model (a load, or a copy at another precision), log how long it took, keep it by precision."""
    started = time.perf_counter()
    loaded = make()
    spent = time.perf_counter() - started
    logger.info("loaded %s (%s, %s) in %.1f s", loaded.name, loaded.pretrained, loaded.precision, spent)
    versions[loaded.precision] = loaded
    return loaded


def _file_state(path: str | os.PathLike[str] | None) -> tuple[str, tuple[int, int, int]] | None:
    """Which file a path names now, and its version: a changed file is a different model."""
    if path is None:
        return None
    try:
        return (str(Path(path).expanduser().resolve()), file_version(Path(path).expanduser().stat()))
    except OSError:
        return None


def _load_model(
    name: str | None,
    pretrained: str,
    *,
    model_config: str | os.PathLike[str] | None = None,
    device: str = "auto",
) -> LoadedModel:
    open_clip = import_open_clip()
    config_path = None
    if model_config is not None:
        config_path = Path(model_config)
        _check_model_config(config_path)
        name = name or config_path.stem
    assert name
    with _config_registered(config_path, name):
        return _build(open_clip, name, pretrained, config_path, device)


@contextlib.contextmanager
def _config_registered(config_path: Path | None, name: str) -> Iterator[None]:
    """open_clip's process-wide table of model configs with ``config_path`` added, under ``name`` (the file's own
    name, or the --model given with it), for the time of one load, then put back: a custom config must not replace
    a built-in model of its name for later loads in this process."""
    if config_path is None:
        yield
        return
    import open_clip.factory as factory

    configs = dict(getattr(factory, "_MODEL_CONFIGS", {}))
    paths = list(getattr(factory, "_MODEL_CONFIG_PATHS", []))
    try:
        factory.add_model_config(config_path)
        if name != config_path.stem:  # (open_clip names a config by its file; a built-in model of this name
            factory._MODEL_CONFIGS[name] = factory._MODEL_CONFIGS[config_path.stem]  # would be built instead)
        yield
    finally:
        if hasattr(factory, "_MODEL_CONFIGS"):
            factory._MODEL_CONFIGS = configs
        if hasattr(factory, "_MODEL_CONFIG_PATHS"):
            factory._MODEL_CONFIG_PATHS[:] = paths


def _build(open_clip: Any, name: str, pretrained: str, config_path: Path | None, device: str) -> LoadedModel:
    """Load a model whose config open_clip knows by ``name``."""
    torch_device = resolve_device(device)
    hub = name.startswith("hf-hub:")
    if not hub:
        check_model_name(name)
    checkpoint, weights, tag_options = _resolve_weights(name, pretrained)
    offline = False
    if hub and _hub_complete(_hub_files(name)):  # loaded from the cache, without asking an unreachable hub
        offline = _cannot_download(_hub_endpoint()) is not None
    elif hub:
        _require_network(name, _hub_endpoint())
    with _hub_offline(offline):
        try:
            with _skip_random_init(), _map_checkpoints(), _no_resizing(Path(pretrained).expanduser().is_file()):
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name,
                    pretrained=checkpoint,
                    device=torch_device,
                    **tag_options,
                )
        except Exception as e:
            if type(e).__name__ == "UnpicklingError":
                raise ModelError(_unpickling_reason(str(pretrained))) from e
            hint = " (is the checkpoint another model's? give its --model or --model-config)" if checkpoint else ""
            raise ModelError(f"cannot load {name} with weights {pretrained}: {_reason(e)}{hint}") from e
        model.eval()
        try:
            tokenizer = open_clip.get_tokenizer(name)
        except ImportError as e:
            raise ModelError(f"the tokenizer of {name} needs the Python package {e.name}: pip install {e.name}") from e
        except Exception as e:
            raise ModelError(f"cannot load the tokenizer of {name}: {_first_line(e)}") from e
    if hub:  # the files just loaded: a repository whose weights changed on the hub is another model
        weights = f"{name}@{_hub_content(_hub_files(name))}"
    # One checkpoint can be loaded into models that compute differently (QuickGELU or GELU, another pooling):
    # what identifies the model is its weights and what it is built from.
    built_from = {"model": name, "config": open_clip.get_model_config(name), "options": tag_options}
    fingerprint = fingerprint_of(weights, built_from)
    return LoadedModel(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        name=name,
        pretrained=checkpoint if Path(pretrained).expanduser().is_file() else pretrained,  # files: absolute
        fingerprint=fingerprint,
        device=torch_device,
        model_config=str(config_path.resolve()) if config_path else None,
        pixels=split_preprocess(preprocess),
        precision=resolve_precision(torch_device),
        built_from=built_from,
    )


def fingerprint_of(weights: str, built_from: dict[str, Any]) -> str:
    """What identifies a model: its weights, and a digest of what it is built from (name, config, options)."""
    return f"{weights}|built:{key_of(built_from)[:16]}"


_INIT_FUNCTIONS = (
    "normal_",
    "uniform_",
    "trunc_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "xavier_uniform_",
    "xavier_normal_",
    "orthogonal_",
    "constant_",
    "zeros_",
    "ones_",
)


def import_open_clip() -> Any:
    """open_clip, or a ModelError saying how to repair the install when it (or torchvision under it) fails to
    import: a torchvision built for another torch fails with a RuntimeError, not an ImportError."""
    try:
        import open_clip
    except (ImportError, RuntimeError, OSError) as e:
        raise ModelError(
            f"open_clip cannot be imported ({_first_line(e)}): reinstall torch and torchvision together from one "
            "index, then open_clip_torch (pip install --force-reinstall torch torchvision open_clip_torch)"
        ) from e
    return open_clip


@contextlib.contextmanager
def _skip_random_init() -> Iterator[None]:
    """Skip drawing random initial weights that the checkpoint, loaded strictly, overwrites anyway.

    A ViT-B/32 draws 150M random numbers at creation: about a second of start-up on a small CPU.
    """
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


@contextlib.contextmanager
def _map_checkpoints() -> Iterator[None]:
    """Map torch checkpoint files into memory instead of reading them whole before the model copies them.

    open_clip reads a checkpoint with ``torch.load`` and then copies each tensor into the model; with ``mmap``
    the first read goes straight from the file (a ViT-B/32: 0.05 s instead of 0.4 to 1 s). Only the zip
    format that ``torch.save`` writes can be mapped, from a path that is UTF-8; other files load as before.
    """
    import zipfile

    original = torch.load

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        mappable = isinstance(f, (str, os.PathLike)) and is_text(os.fsdecode(f))  # (torch's mmap wants UTF-8)
        if "mmap" not in kwargs and mappable and zipfile.is_zipfile(f):
            kwargs["mmap"] = True
        return original(f, *args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


@contextlib.contextmanager
def _no_resizing(refuse: bool) -> Iterator[None]:
    """Refuse, while ``refuse``, to load a checkpoint whose position embeddings open_clip would resize to the
    model's: weights for another image size, patch size or text context, which it interpolates without a word,
    giving other numbers than the model they were trained as (a ViT-B-32-256 checkpoint loaded as ViT-B-32)."""
    import open_clip.factory as factory

    names = ("resize_pos_embed", "resize_text_pos_embed")
    originals = {name: getattr(factory, name, None) for name in names}

    def guarded(resize: Callable[..., Any]) -> Callable[..., Any]:
        def run(state_dict: dict[str, Any], model: Any, *args: Any, **kwargs: Any) -> Any:
            own = model.state_dict()
            for key, value in state_dict.items():
                if "positional_embedding" in key and key in own and tuple(own[key].shape) != tuple(value.shape):
                    raise ModelError(
                        f"the checkpoint's {key} is {list(value.shape)}, the model's {list(own[key].shape)}: it was "
                        "trained for another image size, patch size or text context, which open_clip would resize it to"
                    )
            return resize(state_dict, model, *args, **kwargs)

        return run

    if refuse:
        for name, original in originals.items():
            if original is not None:
                setattr(factory, name, guarded(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            if original is not None:
                setattr(factory, name, original)


def _check_model_config(path: Path) -> None:
    """A custom config must be a JSON object with what open_clip needs, or open_clip silently skips it."""
    import json

    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read model config {path}: {e.strerror}") from e
    except ValueError as e:
        raise UsageError(f"model config {path} is not valid JSON: {e}") from e
    needed = ("embed_dim", "vision_cfg", "text_cfg")
    missing = [key for key in needed if not isinstance(config, dict) or key not in config]
    if missing:
        raise UsageError(f"model config {path} is not an open_clip model config: it lacks {', '.join(missing)}")


def check_model_name(name: str) -> None:
    """UsageError for a name open_clip does not know, suggesting the names it may be a slip for: the same in
    another case first (vit-b-32), then the closest."""
    import open_clip

    known = open_clip.list_models()
    if name not in known:
        same = [k for k in known if k.lower() == name.lower()]
        close = [*same, *(c for c in difflib.get_close_matches(name, known, n=3) if c not in same)][:3]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(f"unknown model {name!r}{hint}; `clipzs models` lists them")


def _resolve_weights(name: str, pretrained: str) -> tuple[str, str, dict[str, Any]]:
    """The checkpoint file to load, the weights fingerprint, and what a tag says about how to build the model:
    its preprocessing, and QuickGELU for weights trained with it (OpenAI's, under plain names like ViT-B-32,
    where open_clip only warns and then computes with the wrong activation)."""
    import open_clip

    path = Path(pretrained).expanduser()
    if path.is_file():
        resolved = str(path.resolve())
        if path.suffix == ".safetensors" and not is_text(resolved):
            raise ModelError(f"safetensors opens only files whose path is UTF-8, which {resolved!r} is not: rename it")
        return resolved, f"sha256:{file_sha256(path)}", {}
    if name.startswith("hf-hub:"):
        return "", name, {}  # (open_clip downloads its files, or finds them in the Hugging Face cache)
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        if os.sep in pretrained or path.suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt"):
            raise ModelError(f"checkpoint file {pretrained} does not exist")
        tags = open_clip.list_pretrained_tags_by_model(name)
        known = f"known tags: {', '.join(tags)}" if tags else "it has no pretrained tags: give a checkpoint file"
        raise UsageError(f"{pretrained!r} is neither a pretrained tag of {name} nor a file; {known}")
    options: dict[str, Any] = {f"image_{k}": cfg[k] for k in PREPROCESS_KEYS if k in cfg}
    if cfg.get("quick_gelu"):
        options["force_quick_gelu"] = True
    checkpoint = _cached_checkpoint(cfg)
    if checkpoint is None:
        _require_network(f"{name} ({pretrained})", cfg.get("url") or _hub_endpoint())
        from open_clip.pretrained import download_pretrained

        try:
            checkpoint = download_pretrained(cfg)
        except Exception as e:
            raise ModelError(f"could not download the weights of {name} ({pretrained}): {_first_line(e)}") from e
    return checkpoint, f"{name}:{pretrained}", options


def _cached_checkpoint(cfg: dict[str, Any]) -> str | None:
    """The local file of a tag's weights when a previous download left it in the cache, without network."""
    if cfg.get("file"):
        return str(cfg["file"])
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        repo_id, filename = os.path.split(hub)  # 'org/repo/' names the default weights file
        filename = filename or HF_WEIGHTS_NAME
        candidates = [filename]
        if filename == HF_WEIGHTS_NAME:
            candidates.insert(0, HF_SAFE_WEIGHTS_NAME)
        elif filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        for candidate in candidates:
            found = try_to_load_from_cache(repo_id, candidate)
            if isinstance(found, str):
                return found
        return None
    url = cfg.get("url", "")
    if url:
        target = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        return str(target) if target.is_file() else None
    return None


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def _require_network(what: str, url: str) -> None:
    """Fail at once, with what to do instead, when weights must be downloaded and cannot be."""
    why_not = _cannot_download(url)
    if why_not:
        raise ModelError(
            f"the weights of {what} are not in the local cache and {why_not}. Run once with network access to "
            "download and cache them, or give a local checkpoint file (a torch.save state dict or safetensors) with "
            "--pretrained PATH and the --model (or --model-config) it is for."
        )


def _cannot_download(url: str) -> str | None:
    """Why nothing can be downloaded from ``url`` now, or None when it may be."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")):
        return None  # behind a proxy a direct probe says nothing: let the download itself try
    parsed = urllib.parse.urlparse(url)
    host = parsed.hostname or url
    if not _reachable(host, parsed.port or (80 if parsed.scheme == "http" else 443)):
        return f"{host} cannot be reached"
    return None


def _hub_files(name: str) -> dict[str, Path]:
    """The files of an ``hf-hub:`` model's repository that open_clip loads (config, weights) as the Hugging Face
    cache holds them now, by name."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    files = {}
    for filename in (HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME):
        try:
            found = try_to_load_from_cache(name.removeprefix("hf-hub:"), filename)
        except ValueError as e:  # huggingface_hub's HFValidationError: not a repository id
            raise UsageError(f"{name!r} does not name a Hugging Face repository (hf-hub:ORG/NAME): {e}") from e
        if isinstance(found, str):
            files[filename] = Path(found)
    return files


def _hub_complete(files: dict[str, Path]) -> bool:
    """Whether ``_hub_files`` holds a config and weights (a download cut short may have left the config alone)."""
    from open_clip.constants import HF_CONFIG_NAME

    return HF_CONFIG_NAME in files and len(files) > 1


def _hub_content(files: dict[str, Path]) -> str:
    """What an ``hf-hub:`` model's cached files (``_hub_files``) hold: a commit that changes none of them (a README
    edited) is the same model. The cache names its files' contents (blobs/<hash>); where it copies them instead
    of linking (no symlinks), their SHA-256."""
    parts = []
    for path in files.values():
        blob = Path(os.path.realpath(path))
        parts.append(blob.name if blob.parent.name == "blobs" else file_sha256(blob))
    return key_of({"files": parts})[:16]


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Keep huggingface_hub from asking the hub (it would retry for half a minute) while a model loads from its
    cache: what HF_HUB_OFFLINE=1 does, for this load only."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline or saved
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _reachable(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port opens within PROBE_TIMEOUT_S (name lookup included)."""

    def connect() -> None:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            pass

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(connect).result(timeout=PROBE_TIMEOUT_S)
        return True
    except (OSError, concurrent.futures.TimeoutError):
        return False
    finally:
        pool.shutdown(wait=False)


def _unpickling_reason(path: str) -> str:
    """Why torch.load refused a file: pickled code (refused on purpose), or no checkpoint at all."""
    import zipfile

    with contextlib.suppress(OSError), open(path, "rb") as f:
        if f.read(1) == b"\x80" or zipfile.is_zipfile(path):  # what torch.save writes: a pickle, or a zip of one
            return (
                f"{path} is not a plain tensor checkpoint (it would need to run pickled code, which clipzs "
                "refuses); save a state dict or safetensors"
            )
    from clipzs.classifier import Classifier
    from clipzs.errors import ClassifierError

    with contextlib.suppress(ClassifierError):
        Classifier.load(Path(path))
        return f"{path} is a clipzs classifier file, not model weights: pass it with --classifier"
    return f"{path} is not a checkpoint: neither a file torch.save wrote nor safetensors"


_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from checkpoint, "
    r"the shape in current model is torch\.Size\((\[[^\]]*\])\)"
)
_KEYS = re.compile(r"(Missing|Unexpected) key\(s\) in state_dict: (.*)")


def _reason(error: BaseException) -> str:
    """One line saying why a model did not load; for state-dict mismatches, the kinds and a first example."""
    text = str(error).strip()
    if "Error(s) in loading state_dict" not in text:
        return _first_line(error)
    found = []
    for line in text.splitlines()[1:]:
        if keys := _KEYS.search(line):
            names = re.findall(r'"([^"]+)"', keys.group(2))
            what = "missing from the checkpoint" if keys.group(1) == "Missing" else "in the checkpoint, not the model"
            found.append(f"{len(names)} weights {what} (first: {names[0] if names else '?'})")
        elif mismatch := _MISMATCH.search(line):
            name, theirs, ours = mismatch.groups()
            found.append(f"{name} is {theirs} in the checkpoint but {ours} in the model")
    return "the weights do not fit its layers: " + "; ".join(found[:2] or [_first_line(error)])


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
