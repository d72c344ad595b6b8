"""Which model a client command (run-edge, plan, sweep, profile) uses: ``--model`` in either form, or the one
model there is.

``--model`` takes what ``export`` takes (``resnet50``, ``torchvision:NAME``, ``package.module:function``) or the
id its bundles carry (``torchvision-NAME``, ...): ``schema.model_id`` turns the one into the other, by the rule
the exporter names its bundles with, and a cached bundle whose ``model.source`` is the value given matches too.

Without ``--model``, the command uses the one model that the edge's cache and the cloud hold, and says so on
stderr; where they hold none, resnet50 (the seed's usage, ``run-edge --split 20`` against a serve-cloud that
exports resnet50 on demand); where they hold several, it stops with the list (split 28 is another point in
each model: which one is meant is the user's to say, not a guess of ours).  A model that neither holds is
refused in one line that lists those they do hold.

What serve-cloud holds comes from its STATUS reply's ``models`` (the models it holds bundles of, and the one it
exports on demand with ``serve-cloud --model``), on a connection of its own; a cloud from before that field says
nothing, and the command goes on as if it held nothing.  A Triton cloud's models are its repository entries'
``model_id`` parameters (``KServeConnection.model_ids``).

Python 3.6 syntax: this module runs on the Jetson.
"""
import contextlib

from runtime.bundle.schema import model_id
from runtime.bundle.store import BundleStore
from runtime.edge.console import say
from runtime.errors import UserError
from runtime.wire.codec import RemoteError

DEFAULT_MODEL = "resnet50"
# refusals that may mean the model is not there at all (the others are about a bundle of a model that is)
MODEL_REFUSALS = ("unknown_bundle", "no_active", "no_segments")


def cache_models(root):
    """model id -> its spec (or None), for every model that a bundle in the edge's cache ``root`` is of."""
    return BundleStore(root).models()


def cloud_models(options):
    """The model ids the cloud at ``options.cloud`` holds bundles of or exports on demand (a set), or None where it
    does not say (a serve-cloud from before STATUS's ``models``)."""
    listing = cloud_listing(options)
    return None if listing is None else set(listing)


def cloud_listing(options):
    """What the cloud at ``options.cloud`` holds, per model id: serve-cloud's STATUS ``models`` (``{"splits": [the
    splits it holds], "on_demand": whether it exports the others}``), a Triton cloud's model ids (each ``{}``:
    Triton exports nothing), or None where it does not say (no cloud, or a serve-cloud from before ``models``)."""
    from runtime.edge.kserve import is_kserve
    if not options.cloud:
        return None
    if is_kserve(options.cloud):
        return {found: {} for found in _triton_models(options)}
    from runtime.edge.client import CloudConnection
    conn = CloudConnection(options.cloud, options.timeout, security=options.security)
    try:
        models = conn.status().get("models")
    finally:
        conn.close()
    return models if isinstance(models, dict) else None


def _triton_models(options):
    from runtime.edge.kserve import KServeConnection
    conn = KServeConnection(options.cloud, options.timeout, None, options.cache)
    try:
        return conn.model_ids()
    finally:
        conn.close()


def id_for(asked, cached=None):
    """The model id ``asked`` (a --model value in either form) names: that of the cached bundles whose
    ``model.source`` it is, else ``schema.model_id``'s."""
    for found, source in sorted((cached or {}).items()):
        if source == asked:
            return found
    return model_id(asked)


def spec_hint(found, cached=None):
    """The spec form of a model id, where it is known (a cached bundle's source, or torchvision's rule)."""
    source = (cached or {}).get(found)
    if source and ":" in source and not source.startswith("seed:"):
        return source
    if found.startswith("torchvision-"):
        return "torchvision:" + found[len("torchvision-"):]
    return None


def _both_forms(asked, found, cached):
    """``asked`` with its other form: ``torchvision:NAME (model id torchvision-NAME)`` or the reverse."""
    other = found if asked != found else spec_hint(found, cached)
    if other is None or other == asked:
        return asked
    return "{} ({} {})".format(asked, "model id" if other == found else "spec", other)


def _holders(options, joint="and"):
    """``the edge's cache C and the cloud H`` (``joint`` "or": either)."""
    return "the edge's cache {}{}".format(options.cache, " {} the cloud {}".format(joint, options.cloud)
                                          if options.cloud else "")


def _listing(cached, cloud):
    """``a (cache), b (cloud, cache)``: every model held, where."""
    names = sorted(set(cached) | set(cloud or ()))
    return ", ".join("{} ({})".format(n, ", ".join(w for w, held in (("cache", cached), ("cloud", cloud or ()))
                                                    if n in held)) for n in names)


def resolve(options):
    """Set ``options.model`` (ClientOptions: model, cache, cloud, timeout, security) to the model id the command
    uses, and return it: ``--model`` in either form, or without it the one model held (see the module's doc)."""
    cached = cache_models(options.cache)
    if options.model:
        options.model = id_for(options.model, cached)
        return options.model
    cloud = cloud_models(options)
    held = set(cached) | set(cloud or ())
    if len(held) == 1:
        only = held.pop()
        hint = spec_hint(only, cached)
        say("model {}{} (no --model given: the only model that {} hold)".format(
            only, " = {}".format(hint) if hint else "", _holders(options)))
        options.model = only
    elif not held:
        say("model {} (no --model given: the default; nothing is held yet in {})".format(DEFAULT_MODEL,
                                                                                   _holders(options, "or")))
        options.model = DEFAULT_MODEL
    else:
        raise UserError("no --model given, and {} hold several models: {}; pass one of them with --model".format(
            _holders(options), _listing(cached, cloud)))
    return options.model


def held(options):
    """Whether the edge's cache or the cloud holds a bundle of ``options.model`` (True where the cloud cannot say)."""
    if options.model in cache_models(options.cache):
        return True
    cloud = cloud_models(options)
    return cloud is None or options.model in cloud


def explain(exc, asked, options):
    """The one-line error for a refusal (RemoteError ``exc`` of a HELLO or PROFILE) of a model that neither the
    edge's cache nor the cloud holds: what was asked, in both forms, and the models they do hold; None where the
    model is held (the refusal says what is wrong) or nothing can be said."""
    found = options.model
    if not found or exc.code not in MODEL_REFUSALS:
        return None
    message = str(exc)
    if message.startswith("cloud: "):
        message = message[len("cloud: "):]
    try:
        cloud = cloud_models(options)
    except (UserError, RemoteError, OSError):
        cloud = None
    if cloud is None:
        return None
    cached = cache_models(options.cache)
    if found in cloud or found in cached:
        return None
    if not asked and not cloud and not cached:
        return None  # the default where nothing is held: the cloud's own words
    lead = message.split(" (it holds:")[0].split(";")[0]
    given = _both_forms(asked, found, cached) if asked else "{} (the default)".format(found)
    held = "they hold no model yet: export one on the cloud" if not (set(cached) | cloud) else \
        "they hold {}; pass one of them as --model".format(_listing(cached, cloud))
    return UserError("{}: --model {} is not a model that {} holds; {}".format(lead, given, _holders(options, "or"),
                                                                             held))


@contextlib.contextmanager
def refusals(options):
    """Around a client command: a refusal of its model that neither the cache nor the cloud holds becomes
    ``explain``'s one line."""
    asked = options.model
    try:
        yield
    except RemoteError as exc:
        better = explain(exc, asked, options)
        if better is None:
            raise
        raise better
