"""The cloud: ``serve-cloud``, one process serving the tails of many bundles to many edges.

``server`` (accept, one thread per connection, drain), ``registry`` (the tails,
loaded once and shared), ``batching``, ``stats``.  Never imports ``edge``.
"""
