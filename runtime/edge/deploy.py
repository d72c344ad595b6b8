"""Bundles to the cloud: ``push_to_cloud`` uploads one with the admin token (PUSH,
CHUNKs, DONE), ``copy_bundle`` copies one to a local directory (an SD card, for a
device with no network path), verified and staged like every install.

Python 3.6 syntax: this module runs on the Jetson.
"""
import json
import os
import shutil

from runtime.bundle.manifest import MANIFEST_NAME, directory_name, load_manifest, validate
from runtime.bundle.staging import install_dir, staged
from runtime.errors import UserError
from runtime.wire import auth
from runtime.wire.transfer import file_entries


def _verified(bundle):
    manifest = load_manifest(bundle)
    manifest.verify_files()
    return manifest


def push_to_cloud(bundle, cloud, token, activate=False, timeout=120.0, security=None):
    """Upload a bundle to serve-cloud; return the server's DONE metadata."""
    from runtime.edge.client import CloudConnection
    if not token:
        raise UserError("push needs the server's admin token: --admin-token TOKEN or ${}".format(auth.TOKEN_ENV[auth.ADMIN]))
    manifest = _verified(bundle)
    conn = CloudConnection(cloud, timeout, security=security)
    try:
        nonce = conn.hello({"role": "admin"}).get("nonce")
        if not nonce:
            raise UserError("the cloud at {} did not offer an admin handshake".format(cloud))
        done, done["bytes_sent"] = conn.push(manifest.data, manifest.directory, activate,
                                             auth.proof(token, nonce, auth.ADMIN))
        return done
    finally:
        conn.close()


def copy_bundle(bundle, destination_root):
    """Copy a verified bundle into ``destination_root`` atomically; verify the copy; return its directory."""
    manifest = _verified(bundle)
    target = os.path.join(destination_root, directory_name(manifest.data))
    try:
        with staged(destination_root, "copy") as tmp:
            for entry in file_entries(manifest.data):
                shutil.copyfile(os.path.join(manifest.directory, entry["file"]), os.path.join(tmp, entry["file"]))
            with open(os.path.join(tmp, MANIFEST_NAME), "w") as f:
                json.dump(validate(manifest.data, bundle), f, indent=2)
            load_manifest(tmp).verify_files()
            install_dir(tmp, target)
    except OSError as exc:
        raise UserError("copy to {} failed ({}); nothing was left there".format(destination_root,
                                                                                 exc.strerror or exc))
    return target
