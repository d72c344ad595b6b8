"""What crosses a cut, and what a tail returns: one array, or a tuple of arrays.

Most cuts have one tensor crossing them, and they stay plain numpy arrays on every
path (no wrapping on the hot path).  A cut where several tensors cross (a
``"K.J"`` split, schema 2) is a tuple of arrays in graph order, one per tensor of
the manifest's ``boundary.tensors``; every tensor of one value has the same batch
size.  These helpers let the code that batches, slices and counts work on either.

Python 3.6 syntax: this module runs on the Jetson.
"""
import numpy as np


def as_tuple(value):
    """The arrays of ``value``, in order: ``(array,)`` for one."""
    return value if isinstance(value, tuple) else (value,)


def like(value, arrays):
    """``arrays`` in the form of ``value``: a tuple for a tuple, else the one array."""
    return tuple(arrays) if isinstance(value, tuple) else arrays[0]


def batch_size(value):
    """How many samples ``value`` holds (its first tensor's batch dimension)."""
    return as_tuple(value)[0].shape[0]


def concat(values):
    """Values of the same form, joined along the batch axis, tensor by tensor."""
    if not isinstance(values[0], tuple):
        return np.concatenate(values, axis=0)
    return tuple(np.concatenate(parts, axis=0) for parts in zip(*values))


def rows(value, start, stop):
    """Samples ``start:stop`` of ``value``."""
    return like(value, [a[start:stop] for a in as_tuple(value)])
