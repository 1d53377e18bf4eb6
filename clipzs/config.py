"""Defaults, in one place. No imports beyond the standard library: the CLI reads these before torch loads."""

DEFAULT_MODEL = "ViT-B-32-256"
DEFAULT_PRETRAINED = "datacomp_s34b_b86k"
"""The default model's weights (another model's are always named)."""
DEFAULT_TEMPLATES = "openai-7"
DEFAULT_BATCH_SIZE = 32
"""Images per forward pass on a CPU (on a GPU the default is GPU_BATCH_SIZE), and predictions scored per group."""
GPU_BATCH_SIZE = 256
DEFAULT_TOP_K = 5
CACHE_ENV = "CLIPZS_CACHE_DIR"
