"""The gateway's latency histogram: each bucket counts every request at or under its bound (Prometheus `le`)."""

from __future__ import annotations

import random
import re

from imstore.server.metrics import BUCKETS, Metrics


def test_buckets_are_cumulative_and_a_bound_itself_falls_in_its_bucket():
    metrics = Metrics()
    durations = [*BUCKETS, 0.0, 11.0, 1e-9] + [random.uniform(0, 12) for _ in range(500)]
    for seconds in durations:
        metrics.observe("key", "GET", 200, 0, 10, seconds)
    text = metrics.render(0, [])
    for bound in BUCKETS:
        shown = re.search(rf'^imstore_http_request_duration_seconds_bucket\{{route="key",le="{bound}"\}} (\d+)$', text, re.M)
        assert int(shown.group(1)) == sum(1 for seconds in durations if seconds <= bound), bound
    assert f'le="+Inf"}} {len(durations)}' in text
