"""Which frame a connection may send the cloud, and when: one table, no I/O.

A connection to serve-cloud moves through these facts, each set by one frame:

* authenticated: the edge proved the inference token (AUTH, CHALLENGE, AUTH), or
  the cloud has no token (then every connection starts authenticated);
* admin: it sent an admin's HELLO (``role: admin``), whose WELCOME carries the
  nonce that a PUSH's proof answers;
* bound: a HELLO bound it to a bundle (WELCOME), so its INFERs have a tail.

``RULES`` says, for every frame an edge (or admin) may send, what must be true
first; ``check`` raises the ERROR the cloud answers otherwise.  The server asks
``check`` for a tensor frame before its payload is received (nothing is allocated
for a frame that cannot be served) and for every frame before its handler runs.
CHUNK and DONE are read only inside a transfer (``transfer.receive_files``); met
anywhere else they are refused.  BYE ends the connection in any state.

Python 3.6 syntax: this module runs on the Jetson.
"""
from runtime.wire import codec
from runtime.wire.auth import INFERENCE, TOKEN_ENV
from runtime.wire.codec import AUTH, BYE, CHUNK, DONE, ECHO, FETCH, HELLO, INFER, PROFILE, PUSH, STATUS, ProtocolError

ANY, BOUND, ADMIN, TRANSFER = "any", "bound", "admin", "transfer"

# frame: (needs the token proven, what else the connection must have, the ERROR code and message otherwise)
RULES = {
    AUTH: (False, ANY, None, None),
    BYE: (False, ANY, None, None),
    HELLO: (True, ANY, None, None),  # an admin's HELLO needs no inference token (see check)
    STATUS: (True, ANY, None, None),
    ECHO: (True, ANY, None, None),
    PROFILE: (True, ANY, None, None),
    FETCH: (True, ANY, None, None),
    INFER: (False, BOUND, "no_hello", "INFER before HELLO: the edge must name its bundle first"),
    PUSH: (True, ADMIN, "no_hello", "PUSH needs an admin HELLO first"),
    CHUNK: (False, TRANSFER, "bad_type", "CHUNK outside a push"),
    DONE: (True, TRANSFER, "bad_type", "DONE outside a transfer"),
}
AUTH_REQUIRED = ("auth_required", "this cloud needs its inference token: start the edge with --token TOKEN or "
                 "${}".format(TOKEN_ENV[INFERENCE]))


class Connection(object):
    """The facts ``check`` reads, for one connection (the server's session keeps one)."""

    __slots__ = ("authenticated", "admin", "bound")

    def __init__(self, authenticated=False):
        self.authenticated = authenticated
        self.admin = False
        self.bound = False


def check(state, type_, meta):
    """Raise ProtocolError (the code and message an ERROR frame carries) if ``state`` may not send this frame."""
    needs_token, needs, code, message = RULES[type_]
    if type_ == HELLO and meta.get("role") == "admin":
        return
    if needs_token and not state.authenticated and not (needs == ADMIN and state.admin):
        raise ProtocolError(*AUTH_REQUIRED)
    if needs == ANY or (needs == BOUND and state.bound) or (needs == ADMIN and state.admin):
        return
    raise ProtocolError(code, message)


assert set(RULES) == set(codec.FROM_EDGE), "every frame an edge may send has a rule"
