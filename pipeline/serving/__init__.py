"""A TensorFlow Serving-compatible model server: the embedded default for ``tensorflow/serving``.

``pipeline serve`` (``python -m pipeline.serving``) takes TensorFlow Serving's own flags and speaks its REST and
gRPC APIs, so that a client written for one works against the other unchanged. See ``docs/serving.md``.

Layout: ``options`` (flags and text-proto configs), ``errors`` (status codes), ``codec`` (the REST JSON
contract), ``servable`` (one loaded SavedModel version), ``manager`` (versions, policies, labels, reloads),
``batching``, ``service`` (the API logic shared by both transports), ``rest``, ``grpc_api``, ``metrics``,
``request_log`` and ``server`` (wiring and shutdown). Importing this package imports nothing heavy.
"""
