"""The edge's own answer: the whole model on this device, as a choice (``run-edge --split local``) and as the
way out of a late reply (deadline hedging, ``runtime/edge/hedge.py``).

``LocalSession`` stands where ``EdgeSession`` stands in the measured loop when the run is on the device alone:
its "head" is the whole model (the bundle in the edge's cache whose tail is empty, e.g. ``resnet50-s22``), it
never connects, and ``LocalPipe`` answers every request as soon as it is sent.  So the report is the seed's:
edge = the whole model's time, transmission and cloud 0.  Split 22 keeps the seed's meaning (the whole model
here, its 471 bytes still sent to the cloud and back); ``local`` is the one without the round trip.

``LocalModel`` is what a hedged request is finished with: the tail of the split in use, run here from the
activation the edge already holds, or the whole model from the input, whichever is known to be faster (each
timed as it runs, an exponentially weighted mean).  ``LocalAnswer`` is a reply that came from this device; the
loop records it beside the cloud's, with its path and why.

Python 3.6 syntax: this module runs on the Jetson.
"""
import time

from runtime.backends import load_part
from runtime.edge.session import find_full_model
from runtime.edge.spin import SpinPolicy
from runtime.errors import UserError

LOCAL = "local"
MS_ALPHA = 0.2  # weight of a new timing in a local route's mean


def full_model(cache, model, backend, why):
    """The cached bundle that holds ``model`` whole (its head is the model, it has no tail), or a UserError saying
    ``why`` it is needed and how to get it."""
    full = find_full_model(cache, model, backend)
    if full is None:
        raise UserError("{} needs the full model of {} in {}: a bundle of its last split point, whose tail is empty "
                        "(resnet50: split 22; `cli.py layers` lists them); fetch it once with `run-edge --split 22` "
                        "against the cloud, or copy it there with `push --to`".format(why, model, cache))
    return full


class LocalAnswer(object):
    """A request answered on this device: its output, the ms the edge spent finishing it (beyond the head already
    counted), ``path`` (``hedged``: finished here after waiting for the cloud; ``local``: never sent) and why."""

    compute_ms = 0.0
    queue_ms = 0.0
    meta = {}

    def __init__(self, array, local_ms, path, reason):
        self.array, self.local_ms, self.path, self.reason = array, local_ms, path, reason


class LocalModel(object):
    """The routes to an answer on this device: the tail of a bundle from its activation (``add_tail``), the whole
    model from the input (``whole``), each timed as it runs; ``finish`` takes the faster."""

    def __init__(self, whole=None, clock=time.perf_counter):
        self.whole = whole  # a loaded runner of the whole model, or None
        self.tails = {}     # bundle id -> the loaded runner of its tail
        self.ms = {}        # route ("whole", or a bundle id's tail) -> mean ms
        self._clock = clock

    def add_tail(self, bundle_id, runner):
        self.tails[bundle_id] = runner

    def can_finish(self, bundle_id):
        return self.whole is not None or bundle_id in self.tails

    def remaining_ms(self, bundle_id):
        """The ms finishing a request of ``bundle_id`` here is expected to take (0 until a route was timed)."""
        known = [self.ms[r] for r in self._routes(bundle_id) if r in self.ms]
        return min(known) if known else 0.0

    def _routes(self, bundle_id):
        return ([bundle_id] if bundle_id in self.tails else []) + (["whole"] if self.whole is not None else [])

    def finish(self, bundle_id, activation, x):
        """(output, ms): the request finished here by its faster route (an untimed one is tried first)."""
        routes = self._routes(bundle_id)
        if not routes:
            raise UserError("no way to answer bundle {} on the edge: neither its tail nor the whole model is "
                            "loaded".format(bundle_id))
        untimed = [r for r in routes if r not in self.ms]
        return self._run(untimed[0] if untimed else min(routes, key=lambda r: self.ms[r]), bundle_id, activation, x)

    def warm(self, bundle_id, activation, x):
        """Run (and time) every route once, outside the measured part."""
        for route in self._routes(bundle_id):
            self._run(route, bundle_id, activation, x)

    def _run(self, route, bundle_id, activation, x):
        t0 = self._clock()
        output = self.whole.run(x) if route == "whole" else self.tails[bundle_id].run(activation)
        ms = (self._clock() - t0) * 1000.0
        self.ms[route] = ms if route not in self.ms else (1 - MS_ALPHA) * self.ms[route] + MS_ALPHA * ms
        return output, ms


class _NoConnection(object):
    """What the report asks of a connection, for a run that has none."""

    busy_poll = False

    def __init__(self):
        self.spin = SpinPolicy()  # never spins


class LocalSession(object):
    """The session of ``run-edge --split local``: the whole model from the edge's cache, no cloud."""

    kserve = False
    welcome = {}
    split_label = LOCAL
    reconnects = ()
    fetches = ()
    chained = ()
    local = None

    def __init__(self, options, manifest=None):
        """``manifest``: the whole model's bundle, where the caller found it (else the cache's, or a UserError)."""
        self.manifest = manifest or full_model(options.cache, options.model, options.backend, "--split local")
        self.head = load_part(self.manifest, "head", options.backend, options.device, options.threads)
        self.conn = _NoConnection()

    def encode(self, output):
        return {}, output

    def infer(self, x):
        return self.head.run(x)

    def begin_measure(self):
        pass

    def end_measure(self, recorder):
        pass

    def close(self):
        pass


class LocalPipe(object):
    """Every request answered on the spot: the "head" already ran the whole model (``reason``: why it runs here,
    ``split_local`` for --split local, ``adaptive`` where adaptive mode chose local)."""

    def __init__(self, reason="split_local"):
        self.reason = reason
        self.pending = []

    def full(self):
        return bool(self.pending)

    def settled(self):
        return not self.pending

    def send(self, array, meta, context):
        self.pending.append((LocalAnswer(array, 0.0, LOCAL, self.reason), 0.0, 0, 0, context))

    def next(self):
        return self.pending.pop(0)

    def close(self):
        pass

    def abandon(self):
        del self.pending[:]
