"""The options of the commands that connect to serve-cloud (run-edge, plan, sweep, profile, status).

``ClientOptions`` are those every client takes (where the cloud is, which model,
where heads are cached, how the head runs); each command's class adds its own.
The defaults are the command line's.

Python 3.6 syntax: this module runs on the Jetson.
"""
from runtime.options import Options


class ClientOptions(Options):
    cloud = None        # HOST:PORT of serve-cloud, or grpc://HOST:PORT or http://HOST:PORT of a Triton server
    model = None        # the model: its id or spec (torchvision:NAME); None: the one held (runtime/edge/models.py)
    cache = "artifacts"  # the edge's bundle cache
    cache_keep = 8
    backend = "onnx"
    device = "auto"
    threads = 0         # compute threads for the head (0: the library's default)
    timeout = 30.0      # seconds to wait for the cloud
    security = None     # wire.tls.ClientSecurity (None: plain TCP, no token)
    batch_size = 1
    # planning (plan, run-edge --split auto / --adaptive, sweep's predictions)
    objective = "latency"
    bandwidth = None    # plan for this Mbit/s instead of the measured one
    rtt = None          # ... and this round trip (ms)
    link_profile = None  # a link trace (edge/link.py): plan over its throughput samples (--bandwidth overrides)
    edge_profile = None  # a profile file instead of measuring the edge
    cloud_profile = None
    interval_ms = 0.0   # plan for a batch released every this many ms (0: back to back)
    max_latency_ms = None  # only splits predicted within this many ms are candidates (None: no cap)
    reprofile = False   # measure the edge's profile again, replacing the cached one
    radio_nj_per_byte = None  # --objective energy: the radio's cost per byte (None: planner.DEFAULT_RADIO_NJ_PER_BYTE)


class PlanOptions(ClientOptions):
    timeout = 600.0
    as_json = False
    compress = "none"   # plan the bytes sent as run-edge --compress / --codec sends them
    codec = "none"
    power = "auto"      # the meter the edge's energy is profiled with, for --objective energy (edge/power.py)
    sysfs_root = "/"


class RunOptions(ClientOptions):
    split = None        # a split index, "auto", "local" (the whole model here, no cloud), or None: the bundle
    #                     active on the cloud
    triton_model = None  # with a Triton --cloud (grpc:// or http://): the model's name (default <model>-s<split>)
    follow = False      # switch when the cloud activates another bundle even with an explicit --split
    no_follow = False   # never switch when the cloud activates another bundle
    adaptive = False
    dataset = "cifar100"
    data_dir = "data"
    limit = 100
    shuffle = False
    seed = 0
    warmup = 3
    verbose = False
    report = None       # write the full report as JSON here
    inflight = 1
    compress = "none"
    codec = "none"
    busy_poll = True
    reconnect_timeout = 60.0
    fallback = "none"
    deadline_ms = None  # hedge: finish a request on the edge when its reply would miss this budget from release
    max_age_ms = None   # no frame waits behind the link longer than this (at a cadence)
    stale = "local"     # a frame that did: answered on the edge ("local") or dropped ("drop")
    start_at = None
    power = "auto"      # the edge's power source (edge/power.py): auto, ina3221, jtop, rapl, none
    sysfs_root = "/"    # where the power sources' sys/ is (a container's mount of the host's)

    def follows_active(self):
        """Whether the run switches to a bundle the cloud activates: only when it did not choose its split
        (no --split) or asked to (--follow); never with --no-follow.  An explicit --split K or auto is kept."""
        return not self.no_follow and (self.split is None or self.follow)


class SweepOptions(ClientOptions):
    timeout = 600.0
    splits = None       # the splits to measure (None: sweep.DEFAULT_SPLITS, local left out where it cannot run)
    dataset = "cifar100"
    data_dir = "data"
    limit = 100
    seed = 0
    warmup = 3
    csv_path = None
    png_path = None
    power = "auto"      # each split's energy per sample, measured as run-edge does (edge/power.py)
    sysfs_root = "/"


class ProfileOptions(ClientOptions):
    timeout = 600.0
    out = None          # write the profile (JSON) here
    segments_dir = None  # profile this local segments bundle instead of fetching one
    power = "auto"      # each segment's energy too, where this meter is found (edge/power.py)
    sysfs_root = "/"
