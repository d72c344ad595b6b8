"""Loading a weights file into a model: strict, with errors that name the first mismatching keys.

The file is read only with ``torch.load(weights_only=True)``, which unpickles tensors and plain containers and
nothing else.  A file it refuses is described in this module's own words (what the file is, what to give
instead): torch's message suggests loading it unsafely, which is never what to do with a weights file."""
import os
import re
import zipfile
from typing import Optional

import torch
from torch import nn

from runtime.bundle.manifest import sha256_file
from runtime.errors import file_start

from .errors import ExportError

_SHOW = 5
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6: a zip archive holding <name>/data.pkl
PICKLE_MAGIC = b"\x80"     # ... and before: a pickle (protocol 2 and later begin with this opcode)


def _not_state_dict(path: str, model_id: str, why: str) -> ExportError:
    return ExportError("weights file {} is not a PyTorch state dict of {}: {}; give the state dict of {} saved by "
                       "torch.save(model.state_dict(), PATH)".format(path, model_id, why, model_id))


def _unlike_torch_save(path: str) -> Optional[str]:
    """Why the file at ``path`` cannot be one torch.save wrote, or None where it may be."""
    with open(path, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    if head.startswith(PICKLE_MAGIC):
        return None
    if not head.startswith(ZIP_MAGIC):
        return "torch.save did not write it ({})".format(file_start(path))
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        return "it is a damaged or truncated zip archive ({})".format(exc)
    if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return None
    return "it is a zip archive of {}, not one torch.save writes".format(_list(names))


def _refused(exc: Exception) -> str:
    """What ``torch.load(weights_only=True)`` refused, in words that suggest no unsafe load."""
    found = re.search(r"GLOBAL (\S+)", str(exc))
    if found:  # torch.save(model) pickles the model's class; a checkpoint may pickle other objects
        return "it pickles a {} object, which is never unpickled here (unpickling runs code)".format(found.group(1))
    return "torch cannot read it ({}; damaged or truncated?)".format(type(exc).__name__)


def _read(path: str, model_id: str):
    """What ``path`` holds, read safely, or the ExportError that says what the file is instead."""
    why = _unlike_torch_save(path)
    if why is None:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a corrupt or foreign file
            why = _refused(exc)
    raise _not_state_dict(path, model_id, why)


def _extract_state_dict(obj, path: str, model_id: str) -> dict:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(torch.is_tensor(v) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        what = "a dict of {}".format(_list(map(str, obj))) if isinstance(obj, dict) and obj else \
            "an empty dict" if isinstance(obj, dict) else "a {}".format(type(obj).__name__)
        raise _not_state_dict(path, model_id, "it holds {}, not parameter names mapped to tensors".format(what))
    if all(k.startswith("module.") for k in obj):  # saved from nn.DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _list(keys) -> str:
    keys = sorted(keys)
    more = " (+{} more)".format(len(keys) - _SHOW) if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def _mismatch(state: dict, expected: dict) -> Optional[str]:
    """How a state dict differs from the model's (missing, unexpected and wrongly shaped keys), or None."""
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    if missing or unexpected:
        parts = (["missing {}".format(_list(missing))] if missing else []) + \
            (["unexpected {}".format(_list(unexpected))] if unexpected else [])
        return "{} (the state dict of another model?)".format("; ".join(parts))
    wrong = ["{} {} (the model's is {})".format(k, tuple(state[k].shape), tuple(v.shape))
             for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        return "wrong shape for {}{}".format(", ".join(wrong[:_SHOW]),
                                             " (+{} more)".format(len(wrong) - _SHOW) if len(wrong) > _SHOW else "")
    return None


def load_weights(model: nn.Module, path: str, model_id: str) -> str:
    """Load ``path`` into ``model`` (``model_id``, for messages) with strict key and shape checks; return the file's
    sha256."""
    if not os.path.isfile(path):
        raise ExportError("weights file {} not found; give --weights the path of a state dict of {}, or --random-init "
                          "to export untrained weights (chance-level accuracy)".format(path, model_id))
    state = _extract_state_dict(_read(path, model_id), path, model_id)
    mismatch = _mismatch(state, model.state_dict())
    if mismatch:
        raise _not_state_dict(path, model_id, mismatch)
    model.load_state_dict(state, strict=True)
    return sha256_file(path)


def find_default_weights(default: Optional[str]) -> Optional[str]:
    return default if default and os.path.isfile(default) else None
