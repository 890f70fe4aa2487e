"""What a deployment imports to monitor live LLM output: nothing here trains or evaluates.

- ``serve.monitor``: :class:`~serve.monitor.StreamingMonitor`, the per-stream runtime (O(1) work per new token).
- ``serve.kv_slab``: batched KV storage with per-row offsets that the monitor steps over.
- ``serve.cuda_step``: the CUDA fast path (static step, CUDA graphs) for one-token steps.
- ``serve.text_guard``: :class:`~serve.text_guard.TextStreamGuard`, text deltas of any LLM -> monitored tokens,
  hold-back so that no unscored text is released.
- ``serve.generate``: :class:`~serve.generate.MonitorStoppingCriteria` for ``model.generate(...)``.
- ``serve.category_policy``: harm categories at serving time (which categories stop a stream and which are only
  annotated; OpenAI's and Azure's wire shapes) for checkpoints with a category head.

Submodules are imported on use, so ``import serve`` stays cheap.
"""
