"""The wire: what edge and cloud say to each other (docs/PROTOCOL.md).

``codec`` (frames as bytes, no I/O), ``states`` (which frame may come when),
``sockets`` (the only code that touches a socket), ``transfer`` (files as CHUNK
frames), ``auth`` (the token proofs), ``tls``, ``compression``.  Imports neither
``edge`` nor ``cloud``.  Python 3.6 syntax: this package runs on the Jetson.
"""
