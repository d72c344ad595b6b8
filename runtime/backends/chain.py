"""A head run as a chain of profiling segments (the segments bundle the edge already holds).

In adaptive mode the edge has fetched the model's segments bundle to profile it, so
any split's head is already here, cut into pieces.  Switching to a split whose fused
head is not cached would otherwise mean downloading it over the link that has just
become slow; the chain runs segments 0..k-1 one after the other instead, with the
same weights (the session checks the two bundles were exported from the same ones).

Python 3.6 syntax.
"""
import os

from runtime.backends import format_of, load_file


class SegmentChain(object):
    """Segments ``0..k-1`` of a segments bundle, run in order: the head of split ``k``."""

    name = "segment-chain"

    def __init__(self, parts):
        self.parts = list(parts)
        self.provider = self.parts[0].provider if self.parts else "none"

    def run(self, x):
        for part in self.parts:
            x = part.run(x)
        return x


class SegmentLoader(object):
    """Loads segments of one segments bundle on demand and keeps them, so later switches reuse them."""

    def __init__(self, manifest, backend="onnx", device="auto", threads=0):
        self.manifest = manifest
        self.backend, self.device, self.threads = backend, device, threads
        self._fmt = format_of(backend)
        self._loaded = {}

    def head(self, split):
        """The head of split ``split`` (segments before point ``split``)."""
        return SegmentChain(self._segment(index) for index in range(split))

    def tail(self, split):
        """The tail of split ``split`` (segments from point ``split`` on): a late request finished on the edge."""
        return SegmentChain(self._segment(index) for index in range(split, len(self.manifest["segments"])))

    def _segment(self, index):
        if index not in self._loaded:
            entry = self.manifest["segments"][index]["files"][self._fmt]
            self._loaded[index] = load_file(os.path.join(self.manifest.directory, entry["file"]), self.backend,
                                            self.device, self.threads, self.manifest.directory)
        return self._loaded[index]
