"""Installs that are all or nothing: files are written into a hidden temporary
directory beside the destination (``temp_dir``), checked, then renamed into place;
leftovers of processes that died are removed (``remove_stale_temp_dirs``).

Python 3.6 syntax: this module runs on the Jetson.
"""
import os
import shutil
import tempfile

TEMP_KINDS = ("fetch", "push", "copy")


def temp_dir(root, kind):
    """A hidden temporary directory ``.tmp-KIND-PID-*`` in ``root`` (its pid lets a stale one be removed)."""
    os.makedirs(root, exist_ok=True)
    return tempfile.mkdtemp(prefix=".tmp-{}-{}-".format(kind, os.getpid()), dir=root)


def remove_stale_temp_dirs(root):
    """Delete the transfer directories of processes that died mid-transfer (nothing else: an export may be running)."""
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        parts = name.split("-")
        if len(parts) > 3 and parts[0] == ".tmp" and parts[1] in TEMP_KINDS and parts[2].isdigit() \
                and not _alive(int(parts[2])):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
