"""The cloud's state table (runtime/wire/states.py), driven frame by frame: no sockets, no torch.

Each case is a sequence of frames from one connection and the ERROR code the cloud
answers each with (None: accepted).  The last test drives a whole exchange through
the codec and the reader in memory, the cloud's side consulting the table as the
server does.
"""
import numpy as np
import pytest

from runtime.wire import codec, sockets, states
from runtime.wire.codec import AUTH, BYE, CHUNK, DONE, ECHO, FETCH, HELLO, INFER, PROFILE, PUSH, STATUS


def run(frames, token=True):
    """Feed (type, meta) frames through check(), advancing the state on each accepted frame as the server does."""
    state = states.Connection(authenticated=not token)
    codes = []
    for type_, meta in frames:
        try:
            states.check(state, type_, meta)
        except codec.ProtocolError as exc:
            codes.append(exc.code)
            continue
        codes.append(None)
        states.advance(state, type_, meta)
    return codes


EDGE = {"model": "resnet50", "split": 20}


@pytest.mark.parametrize("frames,expected", [
    ([(INFER, {}), (HELLO, EDGE), (STATUS, {}), (ECHO, {}), (FETCH, {}), (PROFILE, {}), (DONE, {}), (BYE, {})],
     ["no_hello", "auth_required", "auth_required", "auth_required", "auth_required", "auth_required",
      "auth_required", None]),
    ([(AUTH, {}), (AUTH, {"proof": "ok"}), (INFER, {}), (HELLO, EDGE), (INFER, {}), (ECHO, {}), (STATUS, {})],
     [None, None, "no_hello", None, None, None, None]),
    ([(PUSH, {}), (HELLO, {"role": "admin"}), (PUSH, {}), (CHUNK, {}), (INFER, {})],
     ["auth_required", None, None, "bad_type", "no_hello"]),
    ([(AUTH, {}), (AUTH, {"proof": "ok"}), (PUSH, {}), (DONE, {}), (CHUNK, {})],
     [None, None, "no_hello", "bad_type", "bad_type"]),
    ([(HELLO, {"role": "admin"}), (HELLO, EDGE), (PUSH, {})],  # an admin that binds a bundle is an edge again
     [None, "auth_required", None]),
])
def test_a_cloud_with_a_token(frames, expected):
    assert run(frames) == expected


def test_a_cloud_without_a_token_starts_authenticated():
    assert run([(HELLO, EDGE), (INFER, {}), (PUSH, {}), (HELLO, {"role": "admin"}), (PUSH, {}), (DONE, {})],
               token=False) == [None, None, "no_hello", None, None, "bad_type"]


def test_every_frame_an_edge_may_send_has_a_rule_and_its_answers_and_no_other():
    assert set(states.RULES) == set(codec.FROM_EDGE) == {t for t, _ in states.REPLIES}
    assert states.replies(AUTH, {}) == (codec.CHALLENGE,) and states.replies(AUTH, {"proof": "p"}) == (DONE,)
    assert states.replies(PUSH, {}) == (codec.READY, DONE) and states.replies(BYE, {}) == ()


def test_only_an_answered_auth_proof_or_hello_changes_the_state():
    state = states.Connection()
    for type_, meta in [(AUTH, {}), (INFER, {}), (ECHO, {}), (STATUS, {}), (FETCH, {}), (PROFILE, {}),
                        (PUSH, {}), (CHUNK, {}), (DONE, {}), (BYE, {})]:
        states.advance(state, type_, meta)
    assert (state.authenticated, state.admin, state.bound) == (False, False, False)
    states.advance(state, HELLO, {"role": "admin"})
    assert (state.authenticated, state.admin, state.bound) == (False, True, False)
    states.advance(state, AUTH, {"proof": "p"})
    states.advance(state, HELLO, EDGE)
    assert (state.authenticated, state.admin, state.bound) == (True, False, True)


class Pipe(object):
    """One direction of a connection in memory: sendmsg appends, recv_into takes at most 5 bytes at a time."""

    def __init__(self):
        self.data = bytearray()

    def sendmsg(self, buffers):
        for b in buffers:
            self.data += bytes(b)
        return sum(len(b) for b in buffers)

    def recv_into(self, view, nbytes=0, flags=0):
        n = min(len(view), 5, len(self.data))
        view[:n] = self.data[:n]
        del self.data[:n]
        return n


def test_two_peers_in_memory_the_cloud_refusing_before_the_payload():
    up, down = Pipe(), Pipe()
    cloud_state = states.Connection(authenticated=True)
    boundary = (2048, 1, 1)
    seen = []

    def before_payload(type_, dtype, shape, meta):
        states.check(cloud_state, type_, meta)
        seen.append((type_, shape))

    x = np.ones((1,) + boundary, np.float32)
    sockets.send_frame(up, INFER, 1, {}, x)  # before HELLO: refused before its 8 KiB are read
    reader = sockets.FrameReader(up, allowed_types=codec.FROM_EDGE)
    with pytest.raises(codec.ProtocolError) as refused:
        reader.read(before_payload)
    # the payload was not received: only what the receive that completed the metadata brought (under 5 bytes)
    assert refused.value.code == "no_hello" and len(up.data) > x.nbytes - 5 and seen == []
    sockets.send_error(down, 1, refused.value.code, str(refused.value))
    answer = sockets.FrameReader(down, allowed_types=codec.FROM_CLOUD).read()
    assert answer.type == codec.ERROR and answer.meta["code"] == "no_hello"

    up.data.clear()  # a fresh connection: HELLO, then the same INFER is received whole
    reader = sockets.FrameReader(up, allowed_types=codec.FROM_EDGE)
    sockets.send_frame(up, HELLO, 2, EDGE)
    hello = reader.read(before_payload)
    states.check(cloud_state, hello.type, hello.meta)
    cloud_state.bound = True
    sockets.send_frame(up, INFER, 3, {}, x)
    infer = reader.read(before_payload)
    assert seen == [(INFER, (1,) + boundary)] and np.array_equal(infer.array, x) and not up.data
