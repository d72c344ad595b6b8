"""The planner against measurements, with a slow edge (CPU quota) and a slow network (tbf), as root only."""
import os
import sys

import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "bench"))
import emulate  # noqa: E402

OK, WHY = emulate.available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)


@pytest.fixture(scope="module")
def work(tmp_path_factory, seed_bundles):
    """A cloud store holding the seed model's splits 0, 20, 22 (segments are exported on demand)."""
    import shutil
    root = tmp_path_factory.mktemp("emulated")
    for split in (0, 20, 22):
        shutil.copytree(str(seed_bundles[0] / "resnet50-s{}".format(split)),
                        str(root / "store" / "resnet50-s{}".format(split)))
    return root


@pytest.mark.parametrize("rate,best", [(1000, 0), (20, 0), (1, 22)])
def test_planner_choice_is_within_10_percent_of_the_measured_best(rate, best, work, seed_weights):
    row = emulate.check_planner(rate, 0.5, str(work / "store"), str(work / "edge"), [0, 20, 22], limit=8,
                                export_args=("--model", "resnet50", "--weights", seed_weights),
                                out_dir=str(work))
    assert row["ratio"] <= 1.10, emulate.format_rows([row]) + "\n" + str(row["measured"])
    # a fast network ships the input to the cloud (12 KiB); at 1 Mbit/s the edge (half a core) does it all
    assert row["best_measured"] == best, row["measured"]


def test_the_link_really_is_rate_limited(work):
    import socket
    import subprocess
    import time
    with emulate.EmulatedLink(rate_mbit=8, edge_cpu=1.0, tag="rate") as link:
        sink = link.cloud([sys.executable, "-c", (
            "import socket; s = socket.socket(); s.bind(('{}', 9000)); s.listen(1); c, _ = s.accept()\n"
            "n = 0\nwhile True:\n    b = c.recv(65536)\n    if not b: break\n    n += len(b)\nprint(n)").format(
                link.cloud_ip)], stdout=subprocess.PIPE, universal_newlines=True)
        time.sleep(0.5)
        started = time.time()
        source = link.edge([sys.executable, "-c", (
            "import socket; s = socket.create_connection(('{}', 9000)); s.sendall(b'x' * 2000000); s.close()").format(
                link.cloud_ip)])
        source.wait(60)
        received = int(sink.communicate(timeout=60)[0])
        seconds = time.time() - started
    assert received == 2000000
    mbit = received * 8 / seconds / 1e6
    assert 5 < mbit < 9, mbit  # 8 Mbit/s asked, minus startup
    del socket

