"""Loading a weights file into a model: strict, with errors that name the first mismatching keys."""
import os
from typing import Optional

import torch
from torch import nn

from runtime.bundle.manifest import sha256_file

from .errors import ExportError

_SHOW = 5


def _extract_state_dict(obj, path: str) -> dict:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(torch.is_tensor(v) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise ExportError("{} holds no state_dict (a dict of tensor names to tensors); "
                          "save one with torch.save(model.state_dict(), PATH)".format(path))
    if all(k.startswith("module.") for k in obj):  # saved from nn.DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _list(keys) -> str:
    keys = sorted(keys)
    more = " (+{} more)".format(len(keys) - _SHOW) if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def load_weights(model: nn.Module, path: str) -> str:
    """Load ``path`` into ``model`` with strict key and shape checks; return the file's sha256."""
    if not os.path.isfile(path):
        raise ExportError("weights file {} not found; pass --weights PATH, or --random-init to export "
                          "untrained weights (chance-level accuracy)".format(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise ExportError("weights file {} cannot be read as a PyTorch checkpoint ({}: {}); "
                          "is it corrupt or truncated?".format(path, type(exc).__name__, str(exc).splitlines()[0][:200]))
    state = _extract_state_dict(obj, path)
    expected = model.state_dict()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing {}".format(_list(missing)))
        if unexpected:
            parts.append("unexpected {}".format(_list(unexpected)))
        raise ExportError("weights file {} does not fit the model: {}; is it for another model?".format(
            path, "; ".join(parts)))
    wrong = ["{} {} (model wants {})".format(k, tuple(state[k].shape), tuple(v.shape))
             for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise ExportError("weights file {} does not fit the model: wrong shape for {}{}".format(
            path, ", ".join(wrong[:_SHOW]), " (+{} more)".format(len(wrong) - _SHOW) if len(wrong) > _SHOW else ""))
    model.load_state_dict(state, strict=True)
    return sha256_file(path)


def find_default_weights(default: Optional[str]) -> Optional[str]:
    return default if default and os.path.isfile(default) else None
