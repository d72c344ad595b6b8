"""A local directory of bundles (``artifacts/``): find one by model and split, or by bundle id; list its models.

Python 3.6 syntax.
"""
import os

from runtime.bundle.manifest import MANIFEST_NAME, ManifestError, bundle_dir_name, load_manifest
from runtime.errors import UserError


class BundleStore(object):
    def __init__(self, root):
        self.root = root

    def _dirs(self):
        if not os.path.isdir(self.root):
            return []
        return sorted(os.path.join(self.root, d) for d in os.listdir(self.root)
                      if not d.startswith(".") and os.path.isfile(os.path.join(self.root, d, MANIFEST_NAME)))

    def scan(self, kind=None):
        """Every readable bundle (of ``kind``, if given), and (directory, error) for those that are not."""
        good, bad = [], []
        for d in self._dirs():
            try:
                manifest = load_manifest(d)
            except ManifestError as exc:
                bad.append((d, str(exc)))
                continue
            if kind is None or manifest.kind == kind:
                good.append(manifest)
        return good, bad

    def models(self):
        """model id -> its spec (``model.source``, e.g. ``torchvision:NAME``; None where not recorded), for every
        model that a readable bundle (split or segments) here is of."""
        found = {}
        for manifest in self.scan()[0]:
            found.setdefault(manifest.model_id, manifest["model"].get("source"))
        return found

    def find(self, model_id, split_index):
        """The bundle for a model and split, or a UserError that says how to make it."""
        directory = os.path.join(self.root, bundle_dir_name(model_id, split_index))
        if not os.path.isfile(os.path.join(directory, MANIFEST_NAME)):
            held = ", ".join(os.path.basename(d) for d in self._dirs()) or "none"
            raise UserError("no bundle for {} split {} in {} (holds: {}); run `cli.py export --model {} --split {}` "
                            "and copy {} here".format(model_id, split_index, self.root, held, model_id, split_index,
                                                      os.path.basename(directory)))
        return load_manifest(directory)
