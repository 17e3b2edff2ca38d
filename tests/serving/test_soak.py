"""The serving soak (benchmarks/serving_soak.py), bounded: ~35 s of mixed valid and invalid
requests from 8 clients against a real server process, then its verdict checked point by point.
No latency bounds: on a shared machine they would measure the neighbours."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # scripts, no package
import serving_soak

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' (the fast lane)


@pytest.fixture(scope="module")
def report(export_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("soak")
    return serving_soak.run_soak(export_dir, workdir, seconds=35, clients=8, warmup=5)


def test_every_kind_of_request_was_sent(report):
    counts = {kind: r["count"] for kind, r in report["requests"].items()}
    assert set(counts) == set(serving_soak.KINDS)
    assert all(n > 0 for n in counts.values()), counts


def test_valid_requests_are_all_answered_right(report):
    for kind, r in report["requests"].items():
        if r["valid"]:
            assert r["problem_count"] == 0, (kind, r["problems"][:3])
            # 200, or "left": the client itself hung up (the disconnect kind) before the end.
            assert set(r["statuses"]) <= {"200", "left"}, (kind, r["statuses"])


def test_invalid_requests_are_refused_with_a_4xx_never_a_5xx(report):
    for kind, r in report["requests"].items():
        if not r["valid"]:
            assert r["problem_count"] == 0, (kind, r["problems"][:3])
            # "closed": a raw-socket request the client broke itself, closed without an answer.
            assert all(s.startswith("4") or s == "closed" for s in r["statuses"]), r["statuses"]
    # The server's own count, which includes answers no client read.
    assert not [s for s in report["server_statuses"] if s.startswith("5")], report[
        "server_statuses"
    ]


def test_memory_threads_and_fds_are_stable(report):
    stability = report["stability"]
    assert stability["ok"], stability["detail"]
    assert stability["growth_mib"] <= serving_soak.RSS_BOUND_MIB
    base, final = report["resources"]["baseline"], report["resources"]["final"]
    assert final["threads"] <= base["threads"], (base, final)
    assert final["fds"] <= base["fds"], (base, final)
    # The load held connections open: the fd count rose during it, then came back.
    assert report["resources"]["peak_fds"] > base["fds"]


def test_no_generation_is_left_running_and_the_server_stops_cleanly(report):
    assert report["generations_in_flight_after"] == 0
    assert report["server_exit"] == 0
    assert report["server_log_errors"] == []
    assert report["ok"], {k: c for k, c in report["checks"].items() if not c["ok"]}


def _samples(rss_mib: list[float]) -> list[dict]:
    return [{"phase": "load", "requests": 500 * i, "rss_mib": rss} for i, rss in enumerate(rss_mib)]


def test_stability_rule_passes_noise_and_flags_a_leak():
    noisy = [300 + (3 if i % 3 == 0 else -2) for i in range(60)]  # +-3 MiB, no trend
    assert serving_soak.stability(_samples(noisy))["ok"]
    # 1 KiB per request: 60 samples of 500 requests = 30,000 requests, ~29 MiB more.
    leak = [300 + 500 * i / 1024 for i in range(60)]
    found = serving_soak.stability(_samples(leak))
    assert not found["ok"] and found["growth_mib"] > serving_soak.RSS_BOUND_MIB
    assert found["slope_mib_per_1k_requests"] == pytest.approx(1000 / 1024, rel=1e-3)
    assert not serving_soak.stability(_samples([300.0] * 5))["ok"]  # too few samples to judge
