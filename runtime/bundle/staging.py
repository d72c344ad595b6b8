"""Installs that are all or nothing, the one way every bundle arrives (export, fetch, push, copy).

``staged`` gives a hidden temporary directory beside the destination; the caller
writes and checks the files there and ends with ``install_dir``, which renames it
into place (an existing bundle is swapped out, never half-overwritten).  If the
block fails, the directory is removed.  Its name holds the kind and the pid, so the
leftovers of a process that died are removed later (``remove_stale_temp_dirs``).

Python 3.6 syntax: this module runs on the Jetson.
"""
import contextlib
import os
import shutil
import tempfile

TEMP_KINDS = ("fetch", "push", "copy", "export")


@contextlib.contextmanager
def staged(root, kind):
    """A fresh ``temp_dir(root, kind)`` for one install; removed unless the block installed it."""
    tmp = temp_dir(root, kind)
    try:
        yield tmp
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def install_dir(tmp, destination):
    """Move a finished bundle directory into place; an existing one is swapped out, never half-overwritten."""
    os.chmod(tmp, 0o755)  # temporary directories are private; a bundle is readable like any other directory
    old = None
    if os.path.exists(destination):
        old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(destination) or ".")
        os.rename(destination, os.path.join(old, "bundle"))
    os.rename(tmp, destination)
    if old:
        shutil.rmtree(old, ignore_errors=True)


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
