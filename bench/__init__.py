"""Benchmarks of the project's own code paths: the GPU benchmark (``benchmark``), the streaming runtime
(``bench_streaming``), the text guard (``bench_guard``) and the HTTP gateway under load (``bench_serve``).
They sit above serve/, model/ and train/, which they measure; nothing imports them."""
