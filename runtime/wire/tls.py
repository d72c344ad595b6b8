"""TLS for the connections between edge and cloud (Python's ``ssl``, TLS 1.2 or newer).

The server loads ``--tls-cert``/``--tls-key``; with ``--tls-client-ca`` it requires
a client certificate signed by that CA (mutual TLS).  A client verifies the server
against ``--tls-ca`` (or the system's CAs with ``--tls``) and checks the host name it
connects to; with ``--tls-cert``/``--tls-key`` it presents its own certificate.
``ClientSecurity`` also carries the inference token (see ``auth``).  See
docs/SECURITY.md.

Python 3.6 syntax: this module runs on the Jetson.
"""
import os
import socket

from runtime.errors import UserError


def _ssl():
    import ssl
    return ssl


def _harden(context):
    ssl = _ssl()
    context.options |= getattr(ssl, "OP_NO_TLSv1", 0) | getattr(ssl, "OP_NO_TLSv1_1", 0)  # TLS 1.2+ (3.6 has no


def _check_file(path, what, flag):
    if not os.path.isfile(path):
        raise UserError("{} {} does not exist; pass the PEM file with {}".format(what, path, flag))


def server_context(cert, key, client_ca=None):
    """The server's TLS context, or None without ``cert``."""
    if not cert and not key and not client_ca:
        return None
    if not cert or not key:
        raise UserError("TLS on the server needs both --tls-cert and --tls-key")
    ssl = _ssl()
    _check_file(cert, "TLS certificate", "--tls-cert")
    _check_file(key, "TLS key", "--tls-key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise UserError("cannot load the TLS certificate {} with key {} ({}); check that they are a PEM pair".format(
            cert, key, exc))
    if client_ca:
        _check_file(client_ca, "client CA", "--tls-client-ca")
        try:
            context.load_verify_locations(client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise UserError("cannot load the client CA {} ({}); pass a PEM file".format(client_ca, exc))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class ClientSecurity(object):
    """How a client (edge, planner, push) connects: TLS context (None: plain TCP) and inference token."""

    def __init__(self, tls=False, ca=None, cert=None, key=None, token=None):
        self.token = token or None
        self.context = None
        if not (tls or ca or cert or key):
            return
        if bool(cert) != bool(key):
            raise UserError("a client certificate needs both --tls-cert and --tls-key")
        ssl = _ssl()
        if ca:
            _check_file(ca, "CA file", "--tls-ca")
        try:
            self.context = ssl.create_default_context(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise UserError("cannot load the CA file {} ({}); pass a PEM file with --tls-ca".format(ca, exc))
        _harden(self.context)
        if cert:
            _check_file(cert, "TLS certificate", "--tls-cert")
            _check_file(key, "TLS key", "--tls-key")
            try:
                self.context.load_cert_chain(cert, key)
            except (ssl.SSLError, OSError) as exc:
                raise UserError("cannot load the client certificate {} with key {} ({})".format(cert, key, exc))

    def wrap(self, sock, host, address):
        """``sock`` wrapped in TLS after a verified handshake, within ``sock``'s timeout (or as it is without TLS)."""
        if self.context is None:
            return sock
        ssl = _ssl()
        seconds = sock.gettimeout()
        try:
            return self.context.wrap_socket(sock, server_hostname=host)
        except ssl.SSLError as exc:
            sock.close()
            reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
            if reason == "WRONG_VERSION_NUMBER":  # what came back is not TLS
                raise UserError("the service at {} answered the TLS handshake with something else than TLS: it is "
                                "not serve-cloud with --tls-cert; give --cloud the HOST:PORT that serve-cloud listens "
                                "on, without --tls/--tls-ca where it runs without --tls-cert".format(address))
            raise UserError("TLS handshake with the cloud at {} failed ({}); check --tls-ca (the CA that signed the "
                            "server's certificate) and, for mutual TLS, --tls-cert/--tls-key".format(address, reason))
        except socket.timeout:
            sock.close()
            raise UserError("the service at {} is not an edgesplit serve-cloud with --tls-cert: it did not answer the "
                            "TLS handshake within {:g} s of connecting; give --cloud the HOST:PORT that serve-cloud "
                            "listens on".format(address, seconds))
        except OSError as exc:
            sock.close()
            raise UserError("TLS handshake with the cloud at {} failed ({}); is serve-cloud started with "
                            "--tls-cert?".format(address, exc.strerror or exc))


PLAIN = ClientSecurity()
