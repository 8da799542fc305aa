"""The search service under load (bench/serve_load.py): queries per second and p50/p95/p99 latency at a
10k and a 1M x 128 gallery, batching on and off, with and without re-ranking the top 10 by the demo teacher.
Every round must answer every request (no error responses), and the server's resident memory must not grow
across repeated rounds."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
from serve_load import Server, demo_student, demo_teacher_dir, load_round, random_index, teacher_pairs_ms  # noqa: E402

# (gallery, clients, requests per client)
FULL = [(10_000, 1, 60), (10_000, 32, 12), (1_000_000, 1, 30), (1_000_000, 32, 6)]
SMOKE = [(2_000, 4, 4)]
ROUNDS = {True: 3, False: 2}  # the same load repeated (full, smoke): resident memory must not grow
BATCHING = {"batched": ["--batch-window-ms", "3", "--max-batch", "64"], "unbatched": ["--max-batch", "1"]}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve_load")
    state = {"folder": folder, "student": demo_student(folder / "student"), "indexes": {}, "server": None, "key": None}
    yield state
    if state["server"] is not None:
        state["server"].stop()


def server_for(state, gallery: int, batching: str) -> Server:
    """One server at a time (a 1M gallery holds 0.5 GB), with the demo teacher loaded (requests without
    "rerank" never touch it): reused while the gallery and the batching stay the same."""
    key = (gallery, batching)
    if state["key"] != key:
        if state["server"] is not None:
            state["server"].stop()
            state["server"] = None
        if gallery not in state["indexes"]:
            state["indexes"][gallery] = random_index(state["folder"], state["student"], gallery)
        args = ["--index", state["indexes"][gallery], "--teacher", demo_teacher_dir(), *BATCHING[batching]]
        state["server"], state["key"] = Server(args), key
    return state["server"]


@pytest.mark.parametrize("rerank", [0, 10], ids=["student", "rerank10"])
@pytest.mark.parametrize("case", range(len(FULL)))
@pytest.mark.parametrize("batching", list(BATCHING))
def test_serve_load(benchmark, full_sizes, workspace, case, batching, rerank):
    sizes = FULL if full_sizes else SMOKE
    if case >= len(sizes):
        pytest.skip("smoke run uses fewer sizes")
    gallery, clients, per_client = sizes[case]
    server = server_for(workspace, gallery, batching)
    load_round(server.port, min(clients, 4), 2, rerank=rerank)  # warm-up: first passes, allocator pools
    results, rss = [], []

    def one_round():
        results.append(load_round(server.port, clients, per_client, rerank=rerank))
        rss.append(server.rss_mib())

    benchmark.group = f"serve G={gallery:,} clients={clients}"
    benchmark.pedantic(one_round, rounds=ROUNDS[full_sizes], iterations=1)
    best = min(results, key=lambda r: r["p50_ms"])
    benchmark.extra_info.update(gallery=gallery, clients=clients, requests_per_client=per_client,
                                batching=batching, rerank=rerank, rss_mib=rss,
                                **{k: round(v, 3) for k, v in best.items() if isinstance(v, float)})
    if rerank and full_sizes:
        benchmark.extra_info["teacher_10_pairs_ms"] = round(teacher_pairs_ms(demo_teacher_dir()), 3)
    assert all(r["errors"] == 0 for r in results), [r["error_examples"] for r in results]
    assert all(r["requests"] == clients * per_client for r in results)
    # no growth across repeated rounds: the last round's resident set within 5% (+16 MiB) of the first's
    assert rss[-1] <= rss[0] * 1.05 + 16, rss
