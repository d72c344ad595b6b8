"""Which split ``run-edge --split`` and ``sweep --splits`` name, found before anything is asked of the cloud.

A split is an index, a ``K.J`` cut of several tensors, or a point's name (its module, its graph node, or a module
whose call ends there), resolved by the exporter's own rule (``schema.resolve_split``) against what the edge knows
of the model's points (``KnownPoints``), learnt in this order until it knows enough:

* its cache (``--cache``): a segments bundle of the model names every point; a split bundle says how many points
  the model has, and names its own;
* where the cache cannot say how many points the model has, the cloud: its listing (STATUS's ``models``) says
  which splits it holds and whether it exports others on demand, and a split it does not hold is checked against
  the manifest in its WELCOME for a bundle of the model that it holds (how many points there are), and refused
  where it would not export it either, before any export is asked for.

A split the model does not have is refused in one line (``split 99 is out of range; valid split points are
0..22``), and so is a name the edge cannot resolve, with what it knows and how to learn the rest.  A Triton cloud
exports nothing and serves only heads the cache holds, so against one the cache alone is asked.

Python 3.6 syntax: this module runs on the Jetson.
"""
from runtime.bundle.manifest import KIND_SEGMENTS, validate
from runtime.bundle.schema import LOCAL, find_point, parse_split, resolve_split, split_order
from runtime.bundle.store import BundleStore
from runtime.errors import UserError

NOT_POINTS = (None, "auto", LOCAL)  # what --split takes besides a point: the active bundle, the plan, no cloud


class KnownPoints(object):
    """What the edge knows of one model's split points: how many (``count``, None where unknown) and the specs of
    those it knows by name (``named``: index -> spec), with where it learnt them (``sources``)."""

    def __init__(self, model):
        self.model = model
        self.count = None
        self.named = {}
        self.sources = []

    def learn(self, data, where):
        """What the manifest ``data`` (of this model) says of its points: a segments manifest all of them, a split
        manifest their count and its own."""
        if data.get("kind") == KIND_SEGMENTS:
            self.named = {p["index"]: p for p in data["points"]}
            self.count = len(data["points"])
        else:
            split = data["split"]
            self.count = data["model"].get("num_split_points", self.count)
            if "cut" not in split and split.get("name"):
                self.named.setdefault(split["index"], {"index": split["index"], "name": split["name"],
                                                       "node": split.get("node")})
        if where not in self.sources:
            self.sources.append(where)

    @property
    def complete(self):
        return self.count is not None and all(i in self.named for i in range(self.count))

    def resolve(self, value, flag, options):
        """``value`` (of option ``flag``) as ``parse_split`` gives it; a UserError where the model has no such point,
        or where it is a name this edge cannot resolve, not knowing every point (``options``: where to learn them)."""
        if self.complete:
            return resolve_split(value, [self.named[i] for i in range(self.count)])
        try:
            split = parse_split(value)
        except ValueError:
            found = find_point(value, self.named.values())
            if found is None:
                raise UserError(self._unresolved(value, flag, options))
            return found
        if self.count is None:
            return split  # nothing says how many points there are: the cloud will
        return resolve_split(split, [self.named.get(i, {"index": i}) for i in range(self.count)])

    def _unresolved(self, value, flag, options):
        known = ", ".join("{}={}".format(i, self.named[i]["name"]) for i in sorted(self.named))
        return ("{} {}: not an index, and not a name among the points of {} that the edge knows ({}); give the "
                "point's index (`cli.py layers --model {}` on the cloud lists them), or fetch the model's segments, "
                "which name every point, into the cache once: `cli.py profile --cloud {} --model {} --cache {} "
                "--out-json profile.json`".format(flag, value, self.model, "{} of {}, from {}".format(
                    known, self.count, ", ".join(self.sources)) if known else "none: its cache holds no bundle of it",
                    _spec(options), options.cloud or "HOST:PORT", self.model, options.cache))


def cached_points(cache, model):
    """What the edge's cache ``cache`` (a directory of bundles) knows of ``model``'s points."""
    known = KnownPoints(model)
    for manifest in BundleStore(cache).scan()[0]:
        if manifest.model_id == model:
            known.learn(manifest.data, "its cache {}".format(cache))
    return known


def resolve_splits(options, values, flag="--split"):
    """``values`` (``--split``'s one, or ``--splits``'), each as ``parse_split`` gives it (None, ``auto`` and
    ``local`` kept as they are), for ``options.model`` (ClientOptions, its model resolved): refused in one line where
    the model has no such point, a name is not known here, or the cloud neither holds nor exports it."""
    known = cached_points(options.cache, options.model)
    splits = [v if v in NOT_POINTS else known.resolve(v, flag, options) for v in values]
    wanted = [s for s in splits if s not in NOT_POINTS]
    if wanted and options.cloud and known.count is None:
        _ask_cloud(options, known, wanted, flag)
    return splits


def _ask_cloud(options, known, splits, flag):
    """Where the edge's cache cannot say which points the model has, what the cloud says of ``splits``: those it does
    not hold are checked against the count of points in the manifest of its WELCOME for a bundle of the model that it
    holds, and where it would not export them either, refused; all before any export is asked for."""
    from runtime.edge.models import cloud_listing
    entry = (cloud_listing(options) or {}).get(options.model)
    if not isinstance(entry, dict) or "splits" not in entry:
        return  # the model is not there (the handshake's refusal says so), a Triton cloud, or a cloud that does not say
    held = sorted(entry["splits"], key=split_order)
    missing = [s for s in splits if s not in held]
    if not missing:
        return
    if held:
        known.learn(_welcome_manifest(options, held[0]), "the cloud's bundle of split {}".format(held[0]))
        for split in missing:
            known.resolve(split, flag, options)
    if not entry.get("on_demand"):
        raise UserError("{} {}: the cloud {} holds {} at split{} {} only and exports no others; export {} on the "
                        "cloud (`cli.py export --model {} --split K`), or start serve-cloud there with --model {} to "
                        "export splits on demand".format(flag, ",".join(map(str, missing)), options.cloud,
                                                         options.model, "" if len(held) == 1 else "s",
                                                         ", ".join(map(str, held)) or "none",
                                                         "it" if len(missing) == 1 else "them", _spec(options),
                                                         _spec(options)))


def _spec(options):
    """The model as `export` and `layers` take it (``torchvision:NAME``, ...), where the cache says; else its id."""
    from runtime.edge.models import cache_models, spec_hint
    return spec_hint(options.model, cache_models(options.cache)) or options.model


def _welcome_manifest(options, split):
    """The manifest the cloud's WELCOME carries for its bundle of ``options.model`` at ``split``."""
    from runtime.edge.client import CloudConnection
    conn = CloudConnection(options.cloud, options.timeout, security=options.security)
    try:
        welcome = conn.hello({"role": "edge", "model": options.model, "split": split, "bundle_id": None})
    finally:
        conn.close()
    return validate(welcome.get("manifest"), "the cloud's manifest")
