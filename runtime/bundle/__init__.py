"""Bundles on disk: the manifest (the one contract between exporter and runtime),
the store of installed bundles, and staged installs (write hidden, check, rename).

Imports neither ``edge`` nor ``cloud``; ``exporter/`` builds its manifests from here.
Python 3.6 syntax: this package runs on the Jetson.
"""
