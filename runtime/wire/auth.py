"""The two tokens and the one way of proving them: HMAC over a fresh nonce, never the token itself.

* The inference token (``--token`` / ``$EDGESPLIT_TOKEN``) lets an edge run
  inference: AUTH, CHALLENGE with a nonce, AUTH with the proof.
* The admin token (``--admin-token`` / ``$EDGESPLIT_ADMIN_TOKEN``) lets an admin push
  bundles: the admin's WELCOME carries the nonce, the PUSH the proof.

``proof = HMAC-SHA256(token, CONTEXT[role] + nonce)`` in hex; the inference proof
has a context prefix so that one can never stand in for the other.  See
docs/SECURITY.md and docs/PROTOCOL.md.

Python 3.6 syntax: this module runs on the Jetson.
"""
import hashlib
import hmac
import secrets

INFERENCE, ADMIN = "inference", "admin"
TOKEN_ENV = {INFERENCE: "EDGESPLIT_TOKEN", ADMIN: "EDGESPLIT_ADMIN_TOKEN"}
CONTEXT = {INFERENCE: b"edgesplit-inference:", ADMIN: b""}


def new_nonce():
    """A fresh challenge: 128 random bits as 32 hex digits."""
    return secrets.token_hex(16)


def proof(token, nonce, role):
    """What proves knowledge of ``role``'s token without sending it."""
    return hmac.new(token.encode("utf-8"), CONTEXT[role] + nonce.encode("utf-8"), hashlib.sha256).hexdigest()


def verify(token, nonce, role, claimed):
    """Whether ``claimed`` is the proof for ``token`` and ``nonce`` (in constant time)."""
    return hmac.compare_digest(str(claimed), proof(token, nonce, role))
