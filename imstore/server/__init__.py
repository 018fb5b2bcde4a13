"""imstore serve: an authenticated aiohttp gateway round-robining over worker processes.

gateway.py (auth, limits, forwarding, health, metrics) · worker.py (HTTP over the
Store API) · supervisor.py (starts and restarts workers) · auth.py (API tokens)
· idempotency.py (Idempotency-Key memory) · protocol.py (routes, keys, problems)
· client.py (the CLI's --remote backend). Only these modules import aiohttp.
"""
