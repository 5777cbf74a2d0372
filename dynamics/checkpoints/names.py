"""Tensor-name normalisation, always reported in the checkpoint's notes.

`module.` (DDP/DeepSpeed) and `_orig_mod.` (torch.compile) are wrappers and always stripped; a
leading `model.` is only stripped for a pair, from the one side that has it, when that helps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from dynamics.checkpoints.base import Checkpoint
from dynamics.errors import CheckpointError

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
MODEL_PREFIX = "model."


def strip_wrapper_prefixes(ckpt: Checkpoint) -> None:
    """Strip leading `module.` / `_orig_mod.` (repeatedly, in any order) from every name."""
    count = rename(ckpt, without_wrappers)
    if count:
        ckpt.notes.append(f"stripped {'/'.join(WRAPPER_PREFIXES)} prefixes from {count} tensor names")


def normalise_pair(a: Checkpoint, b: Checkpoint) -> None:
    """Strip a leading `model.` from the side whose names carry it when the other side's never do
    and stripping raises the number of shared names; then `untie_to_match`. Mutates and notes it."""
    for side, other in ((a, b), (b, a)):
        if _has_model_prefix(side) and not _has_model_prefix(other):
            stripped = {name.removeprefix(MODEL_PREFIX) for name in side.tensors}
            collides = len(stripped) < len(side.tensors)
            if not collides and len(stripped & other.tensors.keys()) > len(side.tensors.keys() & other.tensors.keys()):
                count = rename(side, lambda name: name.removeprefix(MODEL_PREFIX))
                side.notes.append(f"stripped leading '{MODEL_PREFIX}' from {count} tensor names to match {other.path}")
            break
    untie_to_match(a, b)


def untie_to_match(a: Checkpoint, b: Checkpoint) -> None:
    """A name one side stores and the other only has as a tied alias (an untied `lm_head`, against a
    base that ties it to the embedding) is compared against the tensor it is tied to: the alias
    becomes a tensor of its own on the tying side, read from the kept tensor. Noted on that side."""
    for side, other in ((a, b), (b, a)):
        aliases = [name for name in other.tensors if name in side.tied and name not in side.tensors]
        if not aliases:
            continue
        reader = side.reader
        kept_of = {alias: side.tied.pop(alias) for alias in aliases}
        for alias, kept in kept_of.items():
            side.tensors[alias] = replace(side.tensors[kept], name=alias)
            if kept in side.locations:
                side.locations[alias] = side.locations[kept]
        side.reader = lambda name, reader=reader, kept_of=kept_of: reader(kept_of.get(name, name))
        side.notes.append("compared " + ", ".join(f"{alias} as {kept} (tied here, stored in {other.path})"
                                                  for alias, kept in kept_of.items()))


def rename(ckpt: Checkpoint, new_name: Callable[[str], str]) -> int:
    """Rename every tensor of `ckpt` (tensors, locations, tied, reader); returns how many changed."""
    stored_name: dict[str, str] = {}
    for old in ckpt.tensors:
        new = new_name(old)
        if new in stored_name:
            raise CheckpointError(f"{ckpt.path}: tensors {stored_name[new]} and {old} would both be named {new}")
        stored_name[new] = old
    count = sum(new != old for new, old in stored_name.items())
    if not count:
        return 0
    reader = ckpt.reader
    ckpt.tensors = {new_name(old): replace(info, name=new_name(old)) for old, info in ckpt.tensors.items()}
    ckpt.locations = {new_name(old): location for old, location in ckpt.locations.items()}
    ckpt.tied = {new_name(alias): new_name(kept) for alias, kept in ckpt.tied.items()}
    ckpt.reader = lambda name: reader(stored_name.get(name, name))
    return count


def without_wrappers(name: str) -> str:
    while name.startswith(WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def _has_model_prefix(ckpt: Checkpoint) -> bool:
    return any(name.startswith(MODEL_PREFIX) for name in ckpt.tensors)
