"""Options objects: one per entry point, built by ``cli.py`` (or by a caller in Python).

A subclass lists its options as class attributes with their defaults; an instance
takes keyword values for any of them and refuses a name it does not know (a typo is
an error, not a silently ignored setting).  Plain classes, no dataclasses: the edge
runs Python 3.6.
"""


class Options(object):
    """Options with defaults; ``Options(name=value, ...)`` overrides some, ``replace`` copies with others."""

    def __init__(self, **values):
        for name, value in values.items():
            if name.startswith("_") or not hasattr(type(self), name) or callable(getattr(type(self), name)):
                raise TypeError("{} has no option {!r}".format(type(self).__name__, name))
            setattr(self, name, value)

    def replace(self, **values):
        """A copy with some options changed."""
        merged = self.values()
        merged.update(values)
        return type(self)(**merged)

    def values(self):
        """Every option's value, defaults included."""
        names = [n for n in dir(type(self)) if not n.startswith("_") and not callable(getattr(type(self), n))]
        return {n: getattr(self, n) for n in names}

    def __repr__(self):
        return "{}({})".format(type(self).__name__, ", ".join("{}={!r}".format(k, v) for k, v in
                                                              sorted(self.values().items())))
