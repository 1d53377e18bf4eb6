"""Defaults, in one place. No imports beyond the standard library: the CLI reads these before torch loads."""

DEFAULT_MODEL = "ViT-B-32-256"
DEFAULT_PRETRAINED = "datacomp_s34b_b86k"
DEFAULT_TEMPLATES = "openai-7"
DEFAULT_BATCH_SIZE = 32
DEFAULT_TOP_K = 5
CACHE_ENV = "CLIPZS_CACHE_DIR"
