"""Live measurement during training: `Monitor` for a plain torch loop, `DynamicsCallback` / `watch` for
transformers.Trainer and TRL trainers (imported on first use, so `dynamics.live` needs no transformers)."""

from __future__ import annotations

from dynamics.live.monitor import Monitor, logged_scalars

__all__ = ["DynamicsCallback", "Monitor", "logged_scalars", "watch"]


def __getattr__(name: str):
    if name in ("DynamicsCallback", "watch"):
        from dynamics.live import callback

        return getattr(callback, name)
    raise AttributeError(f"module 'dynamics.live' has no attribute {name!r}")
