"""`DynamicsCallback`: the live `Monitor` inside a transformers.Trainer or TRL trainer (GRPO, PPO, SFT, DPO, ...).

At train begin it snapshots the model (a resumed run's base is the weights it resumed from); at every step end
whose `state.global_step` is a multiple of `every` it measures (`Monitor.step`, with the trainer's optimizer);
at the next log it adds the scalars (`dynamics/bitwise_sparsity`, ...) to the trainer's logs and to that
entry of `state.log_history` (so `trainer_state.json` holds them), and keeps that log's reward, KL, loss, ...
in the measured step of the series (`Monitor.add_log`). Callbacks see a log in list order and the
reporting ones (wandb, tensorboard) come first in a trainer's list: `watch(trainer)` puts the callback in front
of them, `callbacks=[DynamicsCallback()]` reaches only the log history, the printed logs and later callbacks.
The series goes to `out/series.json`, default `OUTPUT_DIR/dynamics-live`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from dynamics.geometry_options import GeometryOptions
from dynamics.live.monitor import Monitor

LIVE_FOLDER = "dynamics-live"


class DynamicsCallback(TrainerCallback):
    """Measure every `every` optimizer steps; the other arguments are `Monitor`'s."""

    def __init__(self, every: int = 1, *, storage_dtype: torch.dtype = torch.bfloat16, masters: bool = False,
                 out: str | Path | None = None, geometry_every: int | None = None,
                 geometry: GeometryOptions | None = None):
        self.every, self.out = every, out
        self.options = {"storage_dtype": storage_dtype, "masters": masters, "geometry_every": geometry_every,
                        "geometry": geometry}
        self.monitor: Monitor | None = None
        self.pending: dict[str, float] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        out = self.out if self.out is not None else Path(args.output_dir) / LIVE_FOLDER
        self.monitor = Monitor(model, self.every, out=out, **self.options)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        logged = self.monitor.step(model, optimizer, global_step=state.global_step)
        if logged is not None:
            self.pending = logged

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or self.monitor is None:
            return
        self.monitor.add_log(state.global_step, logs)
        if not self.pending:
            return
        logs.update(self.pending)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self.pending)
        self.pending = {}


def watch(trainer: Trainer, every: int = 1, **options) -> DynamicsCallback:
    """A `DynamicsCallback(every, **options)` put first in `trainer`'s callbacks, so that the reporting
    callbacks (wandb, tensorboard, ...) see its scalars in the same log; returns it (its `.monitor` holds the
    series once training began)."""
    callback = DynamicsCallback(every, **options)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback
