"""Which frame a connection may send the cloud, and when: one table, no I/O.

A connection to serve-cloud moves through these facts, each set by one frame:

* authenticated: the edge proved the inference token (AUTH, CHALLENGE, AUTH), or
  the cloud has no token (then every connection starts authenticated; the edge
  learns which from its greeting's CHALLENGE, ``required``);
* admin: it sent an admin's HELLO (``role: admin``), whose WELCOME carries the
  nonce that a PUSH's proof answers;
* bound: a HELLO bound it to a bundle (WELCOME), so its INFERs have a tail.

``RULES`` says, for every frame an edge (or admin) may send, what must be true
first; ``check`` raises the ERROR the cloud answers otherwise.  ``REPLIES`` says
which frames answer each request, in order, and ``TRANSITIONS`` which facts an
answered request sets.  Both peers consult the three tables: the server checks
every frame it receives and calls ``advance`` as it answers; the edge's client
(``edge/client.py``) checks every frame before it sends it, accepts only the
answers ``REPLIES`` names (an ERROR may answer anything, NOTICEs may come before
the answer), and calls ``advance`` when the answer is in, so the two keep the same
picture of the connection.

The server asks ``check`` for a tensor frame before its payload is received
(nothing is allocated for a frame that cannot be served) and for every frame
before its handler runs.  CHUNK and DONE are read only inside a transfer
(``transfer.receive_files``); met anywhere else they are refused.  BYE ends the
connection in any state.

Python 3.6 syntax: this module runs on the Jetson.
"""
from runtime.wire import codec
from runtime.wire.auth import INFERENCE, TOKEN_ENV
from runtime.wire.codec import (
    AUTH,
    BYE,
    CHALLENGE,
    CHUNK,
    DONE,
    ECHO,
    FETCH,
    HELLO,
    INFER,
    PROFILE,
    PUSH,
    READY,
    RESULT,
    STATUS,
    WELCOME,
    ProtocolError,
)

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
AUTH_REQUIRED = ("auth_required", "this cloud needs its inference token: pass it with --token TOKEN or "
                 "${}".format(TOKEN_ENV[INFERENCE]))  # every command that may need it has --token


# (frame, variant): the frames that answer it, in order.  A FETCH is answered by the files as CHUNKs, then
# DONE; a PUSH by READY, then (after the pusher's own CHUNKs and DONE) DONE; BYE, CHUNK and DONE by nothing.
REPLIES = {
    (AUTH, "challenge"): (CHALLENGE,),
    (AUTH, "proof"): (DONE,),
    (HELLO, "edge"): (WELCOME,),
    (HELLO, "admin"): (WELCOME,),
    (INFER, None): (RESULT,),
    (ECHO, None): (RESULT,),
    (STATUS, None): (DONE,),
    (PROFILE, None): (DONE,),
    (FETCH, None): (CHUNK, DONE),
    (PUSH, None): (READY, DONE),
    (BYE, None): (),
    (CHUNK, None): (),
    (DONE, None): (),
}

# (frame, variant): the facts it sets once the cloud has answered it; every other frame sets none
TRANSITIONS = {
    (AUTH, "proof"): (("authenticated", True),),
    (HELLO, "admin"): (("admin", True),),
    (HELLO, "edge"): (("admin", False), ("bound", True)),
}


def variant(type_, meta):
    """Which of a frame's kinds this is: AUTH asks for a challenge or answers one, HELLO binds an edge or an admin."""
    if type_ == AUTH:
        return "proof" if meta.get("proof") is not None else "challenge"
    if type_ == HELLO:
        return "admin" if meta.get("role") == "admin" else "edge"
    return None


class Connection(object):
    """The facts ``check`` reads, for one connection (the server's session and the edge's client keep one each)."""

    __slots__ = ("authenticated", "admin", "bound")

    def __init__(self, authenticated=False):
        self.authenticated = authenticated
        self.admin = False
        self.bound = False


def check(state, type_, meta):
    """Raise ProtocolError (the code and message an ERROR frame carries) if ``state`` may not send this frame."""
    needs_token, needs, code, message = RULES[type_]
    if type_ == HELLO and variant(type_, meta) == "admin":
        return
    if needs_token and not state.authenticated and not (needs == ADMIN and state.admin):
        raise ProtocolError(*AUTH_REQUIRED)
    if needs == ANY or (needs == BOUND and state.bound) or (needs == ADMIN and state.admin):
        return
    raise ProtocolError(code, message)


def replies(type_, meta):
    """The frames that answer this request, in order (``REPLIES``)."""
    return REPLIES[type_, variant(type_, meta)]


def advance(state, type_, meta):
    """Set the facts an answered request changes (``TRANSITIONS``)."""
    for fact, value in TRANSITIONS.get((type_, variant(type_, meta)), ()):
        setattr(state, fact, value)


assert set(RULES) == set(codec.FROM_EDGE), "every frame an edge may send has a rule"
assert {t for t, _ in REPLIES} == set(codec.FROM_EDGE), "every frame an edge may send has its answers"
assert all(a in codec.FROM_CLOUD for answers in REPLIES.values() for a in answers), "answers come from the cloud"
