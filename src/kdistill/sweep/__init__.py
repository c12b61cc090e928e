"""Sweeps on Ray: one Ray task per DVC experiment, DVC the owner of caching and lineage, MLflow of tracking.

``plan`` (what to run and where results go; no Ray), ``task`` (one experiment in a scratch clone,
run on whichever node Ray picks), ``driver`` (``kdistill sweep``). Ray is an optional extra:
``pip install -e '.[ray]'``.
"""
