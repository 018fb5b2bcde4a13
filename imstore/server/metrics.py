"""Prometheus text-format counters for the gateway: requests, bytes, latency, worker restarts."""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict

__all__ = ["Metrics", "BUCKETS"]

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """In-memory counters of one gateway (they start at zero with each serve)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.bytes_in: dict[str, int] = defaultdict(int)
        self.bytes_out: dict[str, int] = defaultdict(int)
        # Per route, how many fell in each bucket alone (the last: above every bound); made cumulative when rendered.
        self.latency_buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.latency_count: dict[str, int] = defaultdict(int)

    def observe(self, route: str, method: str, status: int, bytes_in: int, bytes_out: int, seconds: float) -> None:
        self.requests[(route, method, status)] += 1
        self.bytes_in[route] += bytes_in
        self.bytes_out[route] += bytes_out
        self.latency_buckets[route][bisect_left(BUCKETS, seconds)] += 1  # the first bound >= seconds (le)
        self.latency_sum[route] += seconds
        self.latency_count[route] += 1

    def render(self, worker_restarts: int, workers: list[dict], memory_hits: int = 0, in_flight: int = 0,
               key_memory_hits: int = 0, s3_memory_hits: int = 0) -> str:
        lines = [
            "# HELP imstore_http_requests_total HTTP requests by route, method and status.",
            "# TYPE imstore_http_requests_total counter",
        ]
        for (route, method, status), count in sorted(self.requests.items()):
            lines.append(f'imstore_http_requests_total{{route="{route}",method="{method}",status="{status}"}} {count}')
        for name, table, text in (
            ("imstore_http_request_bytes_total", self.bytes_in, "Request body bytes received, by route."),
            ("imstore_http_response_bytes_total", self.bytes_out, "Response body bytes sent, by route."),
        ):
            lines += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
            lines += [f'{name}{{route="{route}"}} {count}' for route, count in sorted(table.items())]
        lines += [
            "# HELP imstore_http_request_duration_seconds Time from request to last byte, by route.",
            "# TYPE imstore_http_request_duration_seconds histogram",
        ]
        for route in sorted(self.latency_count):
            count = 0
            for bound, alone in zip(BUCKETS, self.latency_buckets[route], strict=False):
                count += alone
                lines.append(f'imstore_http_request_duration_seconds_bucket{{route="{route}",le="{bound}"}} {count}')
            lines.append(f'imstore_http_request_duration_seconds_bucket{{route="{route}",le="+Inf"}} {self.latency_count[route]}')
            lines.append(f'imstore_http_request_duration_seconds_sum{{route="{route}"}} {self.latency_sum[route]:.6f}')
            lines.append(f'imstore_http_request_duration_seconds_count{{route="{route}"}} {self.latency_count[route]}')
        lines += [
            "# HELP imstore_worker_restarts_total Workers restarted after they died.",
            "# TYPE imstore_worker_restarts_total counter",
            f"imstore_worker_restarts_total {worker_restarts}",
            "# HELP imstore_worker_up Whether each worker answers (1) or not (0).",
            "# TYPE imstore_worker_up gauge",
        ]
        lines += [f'imstore_worker_up{{worker="{w["id"]}"}} {1 if w["alive"] else 0}' for w in workers]
        lines += ["# HELP imstore_worker_requests_total Requests forwarded to each worker.", "# TYPE imstore_worker_requests_total counter"]
        lines += [f'imstore_worker_requests_total{{worker="{w["id"]}"}} {w["requests"]}' for w in workers]
        lines += [
            "# HELP imstore_gateway_object_memory_hits_total Object GETs the gateway answered from its memory of verified objects.",
            "# TYPE imstore_gateway_object_memory_hits_total counter",
            f"imstore_gateway_object_memory_hits_total {memory_hits}",
            "# HELP imstore_gateway_key_memory_hits_total Latest-version GETs by key the gateway answered from its memory.",
            "# TYPE imstore_gateway_key_memory_hits_total counter",
            f"imstore_gateway_key_memory_hits_total {key_memory_hits}",
            "# HELP imstore_gateway_s3_memory_hits_total S3 GETs of a latest version the gateway answered from its memory.",
            "# TYPE imstore_gateway_s3_memory_hits_total counter",
            f"imstore_gateway_s3_memory_hits_total {s3_memory_hits}",
            "# HELP imstore_gateway_requests_in_flight Requests the gateway is handling now (waiting for a worker included).",
            "# TYPE imstore_gateway_requests_in_flight gauge",
            f"imstore_gateway_requests_in_flight {in_flight}",
        ]
        return "\n".join(lines) + "\n"
