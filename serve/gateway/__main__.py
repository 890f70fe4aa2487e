"""``python -m serve.gateway``: see :mod:`serve.gateway.server`."""

from serve.gateway.server import run_cli

run_cli()
