#!/usr/bin/env python3
"""Honest emulation of a slow edge and a slow network, with the kernel's own mechanisms.

* Network: two network namespaces (cloud, edge) joined by a veth pair, a ``tbf``
  rate limit on each end (both directions), changeable while running.
* Edge CPU: the edge's processes run in a cgroup-v1 CPU quota (e.g. 0.25 of a core).

Needs root (``ip netns``, ``tc``, ``/sys/fs/cgroup/cpu``).  As a script it runs the
planner's check: at each rate, serve-cloud in the cloud namespace, then (in the edge
namespace and cgroup) ``plan --json`` and ``sweep``, and prints how far the
planner's choice is from the best split the sweep measured::

    python bench/emulate.py --rates 1000,50,5 --edge-cpu 0.25 --splits 0,3,10,16,20,21,22 --limit 30

Used by tests/test_emulated.py, which skips where this machine does not allow it.
"""
import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(REPO, "cli.py")
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from runtime import launch  # noqa: E402
from runtime.bundle.schema import split_order  # noqa: E402

CGROUP_CPU = "/sys/fs/cgroup/cpu"


def _sh(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def available():
    """(True, '') where namespaces, tbf and CPU quotas can be used here, else (False, why)."""
    if os.geteuid() != 0:
        return False, "needs root (network namespaces, tc, cgroups)"
    if not os.path.isdir(CGROUP_CPU):
        return False, "no cgroup-v1 cpu controller at {}".format(CGROUP_CPU)
    try:
        with EmulatedLink(rate_mbit=100, edge_cpu=1.0, tag="probe"):
            pass
    except (OSError, subprocess.CalledProcessError) as exc:
        return False, "cannot build namespaces/tbf here: {}".format(
            getattr(exc, "stderr", b"").decode(errors="replace").strip() or exc)
    return True, ""


class EmulatedLink(object):
    """A cloud namespace and an edge namespace joined by a rate-limited veth pair, plus an edge CPU quota."""

    def __init__(self, rate_mbit, edge_cpu=1.0, tag=None, subnet="10.231.{}.".format(os.getpid() % 250)):
        tag = tag or str(os.getpid())
        self.cloud_ns, self.edge_ns = "es-cloud-" + tag, "es-edge-" + tag
        self.cloud_if, self.edge_if = "esc" + tag[-8:], "ese" + tag[-8:]
        self.cloud_ip, self.edge_ip = subnet + "1", subnet + "2"
        self.rate_mbit = rate_mbit
        self.edge_cpu = edge_cpu
        self.quota = CpuQuota(edge_cpu, "edgesplit-edge-" + tag)
        self._procs = []

    def __enter__(self):
        try:
            for ns in (self.cloud_ns, self.edge_ns):
                _sh("ip", "netns", "add", ns)
                _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            _sh("ip", "link", "add", self.cloud_if, "netns", self.cloud_ns, "type", "veth", "peer", "name",
                self.edge_if, "netns", self.edge_ns)
            for ns, dev, ip in ((self.cloud_ns, self.cloud_if, self.cloud_ip), (self.edge_ns, self.edge_if, self.edge_ip)):
                _sh("ip", "netns", "exec", ns, "ip", "addr", "add", ip + "/30", "dev", dev)
                _sh("ip", "netns", "exec", ns, "ip", "link", "set", dev, "up")
            self.set_rate(self.rate_mbit, "add")
            self.quota.__enter__()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def set_rate(self, rate_mbit, verb="change"):
        """Rate-limit both directions (tbf on each veth end); may be called while traffic flows."""
        self.rate_mbit = rate_mbit
        # about 4 ms of traffic, at least two full-size packets: a larger bucket at a low rate would let a
        # request of a few KiB through at line rate after every pause (16 KiB at 1 Mbit/s made a 12 KiB request
        # spaced 100 ms apart see 1.7 Mbit/s)
        burst = max(3, int(rate_mbit * 1e6 / 8 / 250 / 1024))
        for ns, dev in ((self.cloud_ns, self.cloud_if), (self.edge_ns, self.edge_if)):
            _sh("ip", "netns", "exec", ns, "tc", "qdisc", verb, "dev", dev, "root", "tbf", "rate",
                "{}mbit".format(rate_mbit), "burst", "{}kb".format(burst), "latency", "200ms")

    def cloud(self, args, **kw):
        """Start a command in the cloud namespace."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.cloud_ns] + args, **kw)
        self._procs.append(proc)
        return proc

    def edge(self, args, **kw):
        """Start a command in the edge namespace, inside the CPU quota."""
        # join the cgroup first: inside `ip netns exec` /sys is remounted and the cgroup tree is not there
        proc = subprocess.Popen(self.quota.wrap(["ip", "netns", "exec", self.edge_ns] + args), **kw)
        self._procs.append(proc)
        return proc

    def __exit__(self, *exc):
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for ns in (self.cloud_ns, self.edge_ns):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        self.quota.__exit__()
        return False


class CpuQuota(object):
    """A cgroup-v1 CPU quota of ``cpus`` cores (e.g. 0.5) for the processes started through ``wrap``."""

    def __init__(self, cpus, name):
        self.cpus = cpus
        self.path = os.path.join(CGROUP_CPU, name)

    def __enter__(self):
        os.makedirs(self.path, exist_ok=True)
        period = 10000  # 10 ms: throttling in small steps, like a slower CPU rather than a stalling one
        with open(os.path.join(self.path, "cpu.cfs_period_us"), "w") as f:
            f.write(str(period))
        with open(os.path.join(self.path, "cpu.cfs_quota_us"), "w") as f:
            f.write(str(int(period * self.cpus)) if self.cpus < 16 else "-1")
        return self

    def wrap(self, argv):
        """``argv`` run inside the quota (the shell joins the cgroup, then becomes the command)."""
        return ["sh", "-c", "echo $$ > {}/cgroup.procs && exec \"$@\"".format(self.path), "sh"] + list(argv)

    def __exit__(self, *exc):
        if os.path.isdir(self.path):
            for _ in range(50):  # the last processes may still be leaving it
                try:
                    os.rmdir(self.path)
                    break
                except OSError:
                    time.sleep(0.1)
        return False


def start_server(link, store, *extra):
    server = launch.serve_cloud("--host", link.cloud_ip, "--port", "9999", "--artifacts", store, *extra,
                                popen=link.cloud, log="discard")
    return server.proc, "{}:9999".format(link.cloud_ip)


def check_planner(rate, edge_cpu, store, cache, splits, limit, dataset="synthetic", threads=1, model="resnet50",
                  export_args=("--model", "resnet50", "--random-init"), out_dir=None):
    """At one rate: the planner's choice (plan --json) and a sweep; returns a summary row."""
    out_dir = out_dir or cache
    with EmulatedLink(rate, edge_cpu) as link:
        server, address = start_server(link, store, "--threads", str(threads), *export_args)
        plan = link.edge([sys.executable, CLI, "plan", "--cloud", address, "--model", model, "--cache", cache,
                          "--threads", str(threads), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True)
        plan_out, plan_err = plan.communicate(timeout=1800)
        if plan.returncode != 0:
            raise RuntimeError("plan failed: " + plan_err)
        planned = json.loads(plan_out)
        sweep_csv = os.path.join(out_dir, "sweep-{}mbit.csv".format(rate))
        choice = planned["choice"]["split"]
        sweep_splits = sorted(set(splits) | {choice}, key=split_order)  # the choice may be "local"
        sweep = link.edge([sys.executable, CLI, "sweep", "--cloud", address, "--model", model, "--cache", cache,
                           "--threads", str(threads), "--splits", ",".join(map(str, sweep_splits)), "--limit",
                           str(limit), "--dataset", dataset, "--csv", sweep_csv, "--warmup", "2"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        _, sweep_err = sweep.communicate(timeout=3600)
        if sweep.returncode != 0:
            raise RuntimeError("sweep failed: " + sweep_err)
        server.terminate()
        server.wait(60)
    rows = list(csv.DictReader(open(sweep_csv)))
    measured = {int(r["split"]) if r["split"].isdigit() else r["split"]: float(r["end_to_end_ms_mean"]) for r in rows}
    best = min(measured, key=measured.get)
    return {"rate_mbit": rate, "edge_cpu": edge_cpu, "planned": choice,
            "planned_predicted_ms": planned["choice"]["latency_ms"], "planned_measured_ms": measured[choice],
            "best_measured": best, "best_measured_ms": measured[best],
            "ratio": measured[choice] / measured[best], "measured": measured,
            "network": planned["network"]}


def format_rows(rows):
    lines = ["| Mbit/s | edge CPU | planner's split | predicted ms | measured ms | best split (sweep) | best ms | ratio |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append("| {} | {} | {} | {:.1f} | {:.1f} | {} | {:.1f} | {:.3f} |".format(
            r["rate_mbit"], r["edge_cpu"], r["planned"], r["planned_predicted_ms"], r["planned_measured_ms"],
            r["best_measured"], r["best_measured_ms"], r["ratio"]))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="1000,50,5", help="Mbit/s, comma-separated")
    parser.add_argument("--edge-cpu", type=float, default=0.25, help="the edge's CPU quota, in cores")
    parser.add_argument("--splits", default="0,3,10,16,20,21,22")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--work", default="/tmp/edgesplit-emulate", help="store, cache and CSVs go here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("emulate: terminated"))  # so namespaces are removed
    ok, why = available()
    if not ok:
        sys.exit("emulate: " + why)
    store, cache = os.path.join(args.work, "store"), os.path.join(args.work, "edge")
    os.makedirs(args.work, exist_ok=True)
    rows = []
    try:
        for rate in [float(r) if "." in r else int(r) for r in args.rates.split(",")]:
            print("emulate: {} Mbit/s, edge {} core ...".format(rate, args.edge_cpu), file=sys.stderr, flush=True)
            rows.append(check_planner(rate, args.edge_cpu, store, cache, [int(s) for s in args.splits.split(",")],
                                      args.limit, out_dir=args.work))
            print(format_rows(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # the link's __exit__ has removed the namespaces, the cgroup and the processes
        sys.exit("emulate: interrupted; namespaces, CPU quota and processes removed")
    print(format_rows(rows))
    with open(os.path.join(args.work, "emulate.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
