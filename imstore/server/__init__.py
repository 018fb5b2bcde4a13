"""imstore serve: an authenticated aiohttp gateway round-robining over worker processes.

gateway.py (auth, limits, forwarding, health, metrics) · worker.py (HTTP over the
Store API) · supervisor.py (starts and restarts workers) · auth.py (API tokens)
· idempotency.py (Idempotency-Key memory) · protocol.py (routes, keys, problems)
· client.py (the CLI's --remote backend). Only these modules import aiohttp.
"""


def run_event_loop(coroutine):
    """asyncio.run, on uvloop where it is installed.

    uvloop gave the gateway about 1.3x the 4 KiB GETs per second of asyncio's own loop
    (bench/bench_serve.py); without it (e.g. on Windows) everything still works."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(coroutine)
    return uvloop.run(coroutine)
