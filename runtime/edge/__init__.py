"""The edge: the client of serve-cloud and everything ``run-edge`` does with it.

``client`` (one connection, every client verb), ``session`` (the head in use, its
cache, switching), ``measure`` (the measured loop), ``run`` (``run-edge``), with the
planning (``planner``, ``adaptive``, ``plan``, ``probe``), the data and the report.
Never imports ``cloud``.  Needs numpy + onnxruntime only (torch for TorchScript).
Python 3.6 syntax: this package runs on the Jetson.
"""
