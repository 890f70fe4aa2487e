"""The moderated streaming gateway: an OpenAI-compatible server that stops harmful output mid-stream.

- ``serve.gateway.app``: the FastAPI application (:func:`~serve.gateway.app.create_app`, :class:`Gateway`).
- ``serve.gateway.scheduler``: continuous batching of every live stream's monitor step in one worker thread.
- ``serve.gateway.sources``: the response sources: an OpenAI-compatible upstream (proxy) or a local HF causal LM.
- ``serve.gateway.upstream_wire``: the one reader of what an upstream sends (scored text, or values of the
  gateway's own; see docs/SECURITY.md).
- ``serve.gateway.protocol``: the OpenAI wire format (requests, errors, chunks) and the chat prompt policy.
- ``serve.gateway.metrics``: Prometheus metrics. ``serve.gateway.detokenize``: ids -> per-token text.
- ``serve.gateway.server``: the command line (``python -m serve.gateway``, ``bash scripts/run-serve.sh``).
"""
