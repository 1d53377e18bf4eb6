"""What classifying one input gives: a plain record, no torch, shared by the library and the writers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCORE_DIGITS = 6


@dataclass(frozen=True)
class Prediction:
    """The result for one input: its best label and the top-k, or the reason it could not be read."""

    path: str
    label: str | None = None
    score: float | None = None
    top_k: tuple[tuple[str, float], ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Prediction:
        """The inverse of ``to_dict`` (scores as rounded there)."""
        if "error" in record:
            return cls(record["path"], error=record["error"])
        top = tuple((entry["label"], entry["score"]) for entry in record["top_k"])
        return cls(record["path"], record["label"], record["score"], top)

    def to_dict(self) -> dict[str, Any]:
        """The JSON Lines record: {path, label, score, top_k: [{label, score}]} or {path, error}."""
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {
            "path": self.path,
            "label": self.label,
            "score": round(self.score or 0.0, SCORE_DIGITS),
            "top_k": [{"label": label, "score": round(score, SCORE_DIGITS)} for label, score in self.top_k],
        }
