"""Benchmark: the serving server against a plain baseline, all measured in the same run.

Registers the built-in model in a temporary (sqlite) MLflow registry, starts the real
`bentoml serve` (as `refit up` does) and, beside it, the seeds' kind of server: a FastAPI
app calling ``model.predict`` per request. Then prints:

- throughput with 32 concurrent clients each sending single 32x32 JPEGs, for the baseline,
  our /predict, and our HTTP ceiling (same upload and decode, no model; these two in
  ``--rounds`` interleaved rounds, medians), with ratios;
- the raw in-process batched throughput of the model (where the time goes);
- single-image p50 latency over HTTP vs one in-process call (target: <= 2x + 5 ms);
- ``--swap-rounds`` x 1,000 requests from 16 clients while the champion is swapped to another
  version and back: errors, versions, and p99 latency of the requests in flight during a
  swap vs the others (pooled over the rounds).

Then overload, on the same server:

- two CPU hogs beside it, 32 clients and two champion swaps: answers by status;
- 64 clients each sending ``predict_batch`` of 64 images: answers by status, resets;
- ``/healthz`` p99 while 16 clients send 36-megapixel PNGs.

Targets: >= 3x the baseline, >= 0.85x the HTTP ceiling, 0 errors during swaps and p99 while
a swap is under way <= 2x steady; overload:
0 non-200 with hogs and swaps, only 200/503 and no resets for the batch flood, healthz p99
< 1 s under large images.

``--cpu``: where the CPU goes, ours and the ceiling: each server's event loop and other
threads (inference, the log writer) and the load generator, in ms of CPU per request, and
the model's own CPU per image in process.

``--log-cost``: the prediction log's cost alone (the same server with ``loop.log_predictions``
off and on, interleaved rounds): throughput and p50; target <= 5%.
Run: .venv/bin/python bench/serve.py [--seconds 15] [--rounds 3] [--swap-rounds 5]
[--log-cost | --swap-only | --cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import httpx
import numpy as np
from PIL import Image

from core.settings import PROJECT_ROOT

TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer in {timeout:.0f} s")


def jpegs(n: int) -> list[bytes]:
    """Holdout images of the embedded sample as 32x32 JPEG uploads."""
    from pipelines.data.sample import unpack_sample

    tmp = Path(tempfile.mkdtemp())
    unpack_sample(PROJECT_ROOT / "samples" / "cifar10-sample.tar.gz", tmp)
    return [p.read_bytes() for p in sorted((tmp / "seed" / "holdout").rglob("*.jpg"))[:n]]


def register_builtin(tmp: Path) -> tuple[str, tuple]:
    """The built-in model as versions 1 (champion) and 2 of a fresh sqlite registry; returns
    (uri, (registry, model))."""
    from core.policies import GatePolicy
    from pipelines.images.decode import ImageSet
    from pipelines.judge.candidate import judge
    from pipelines.judge.registry import Registry
    from pipelines.judge.registry_client import RegistryConfig
    from pipelines.judge.registry_writes import CandidateRun
    from pipelines.models.modelfile import load_refit_model

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    registry = Registry(RegistryConfig(uri, uri, "refit-classifier", str(tmp / "artifacts")))
    model = load_refit_model(PROJECT_ROOT / "models" / "builtin" / "model.keras")
    x = np.stack([np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for d in jpegs(64)])
    holdout = ImageSet(x, np.zeros(len(x), int), model.class_names)  # labels unused here
    lenient = GatePolicy(
        min_accuracy=0,
        min_delta=-1,
        max_recall_drop=1,
        max_old_accuracy_drop=1,
        new_class_min_recall=0,
    )
    judge(model, holdout, registry, lenient, CandidateRun("bench v1"))
    judge(model, holdout, registry, lenient, CandidateRun("bench v2"))  # for the swaps
    registry.rollback("bench: v1 serves until the swaps", to="1")
    return uri, (registry, model)


def start_ours(
    tmp: Path, uri: str, log: bool = True, name: str = "ws"
) -> tuple[subprocess.Popen, str]:
    from core.settings import get_settings
    from refit.services import serving_service

    config = tmp / f"refit-{name}.toml"
    port = free_port()
    config.write_text(
        f'workspace = "{tmp / name}"\nmlflow_tracking_uri = "{uri}"\nserving_port = {port}\n'
        f'[serving]\nadmin_token = "{TOKEN}"\npoll_interval_s = 3600\n'
        f"[loop]\nlog_predictions = {str(log).lower()}\n"
    )
    os.environ["REFIT_CONFIG"] = str(config)
    get_settings.cache_clear()
    service = serving_service(get_settings())
    with open(tmp / f"serving-{name}.log", "wb") as out:
        process = subprocess.Popen(
            service.command,
            env={**os.environ, **service.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_http(f"{service.url}/readyz")
    return process, service.url


BASELINE_APP = """
import io, sys, numpy as np, keras
from fastapi import FastAPI, File, UploadFile
from PIL import Image
model = keras.saving.load_model(sys.argv[1], compile=False)
app = FastAPI()
@app.post("/predict")
async def predict(image: UploadFile = File(...)):
    x = np.asarray(Image.open(io.BytesIO(await image.read())).convert("RGB"))[None]
    probs = model.predict(x.astype("float32"), verbose=0)[0]
    return {"label": int(probs.argmax()), "probability": float(probs.max())}
if __name__ == "__main__":
    import uvicorn
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def start_baseline(tmp: Path) -> tuple[subprocess.Popen, str]:
    script = tmp / "baseline_app.py"
    script.write_text(BASELINE_APP)
    port = free_port()
    model = PROJECT_ROOT / "models" / "builtin" / "model.keras"
    with open(tmp / "baseline.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(script), str(model), str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_http(f"http://127.0.0.1:{port}/docs")
    return process, f"http://127.0.0.1:{port}"


def start_ceiling(tmp: Path) -> tuple[subprocess.Popen, str]:
    """bench/ceiling.py: the same upload and decode in BentoML, no model."""
    port = free_port()
    bentoml = str(Path(sys.executable).parent / "bentoml")
    command = [bentoml, "serve", "bench.ceiling:Ceiling", "--host", "127.0.0.1"]
    with open(tmp / "ceiling.log", "wb") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_http(f"http://127.0.0.1:{port}/readyz")
    return process, f"http://127.0.0.1:{port}"


async def hammer(
    url: str,
    images: list[bytes],
    clients: int,
    seconds: float = 0,
    total: int = 0,
    timeline: list | None = None,
):
    """Concurrent clients posting single images; returns (requests/s, latencies, errors, body
    versions). Runs for ``seconds`` or until ``total`` requests; ``timeline`` gets (start,
    latency) of each request."""
    latencies: list[float] = []
    errors: list[str] = []
    versions: dict[str, int] = {}
    sent = 0
    deadline = float("inf")
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient, i: int) -> None:
        nonlocal sent
        while time.perf_counter() < deadline and (not total or sent < total):
            sent += 1
            data = images[(i + sent) % len(images)]
            started = time.perf_counter()
            answer = await http.post(url, files={"image": ("x.jpg", data, "image/jpeg")})
            latencies.append(time.perf_counter() - started)
            if timeline is not None:
                timeline.append((started, latencies[-1]))
            if answer.status_code != 200:
                errors.append(f"{answer.status_code} {answer.text[:100]}")
            elif "model_version" in (body := answer.json()):
                versions[body["model_version"]] = versions.get(body["model_version"], 0) + 1

    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        for data in images[:clients]:  # warm the connections and the server
            await http.post(url, files={"image": ("x.jpg", data, "image/jpeg")})
        started = time.perf_counter()
        deadline = started + seconds if seconds else float("inf")
        await asyncio.gather(*(client(http, i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies, errors, versions


def in_process(model, images: list[bytes]) -> tuple[float, float]:
    """(p50 single-image latency, batched images/s) of the engine serving would choose."""
    from serving.engines import best_engine

    x = np.stack([np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for d in images])
    engine = best_engine(model.model, x[:32]).engine
    singles = []
    for i in range(200):
        started = time.perf_counter()
        engine(x[i % len(x)][None])
        singles.append(time.perf_counter() - started)
    batch = np.resize(x, (64, *x.shape[1:]))
    engine(batch)
    started, rounds = time.perf_counter(), 30
    for _ in range(rounds):
        engine(batch)
    return statistics.median(singles), rounds * len(batch) / (time.perf_counter() - started)


def sequential_p50(url: str, images: list[bytes], n: int = 200) -> float:
    with httpx.Client(timeout=60) as http:
        times = []
        for i in range(n):
            started = time.perf_counter()
            http.post(url, files={"image": ("x.jpg", images[i % len(images)], "image/jpeg")})
            times.append(time.perf_counter() - started)
    return statistics.median(times[10:])


def swap_under_load(url: str, images: list[bytes], registry, rounds: int) -> tuple:
    """``rounds`` x (1,000 requests from 16 clients while the champion is swapped to
    version 2 and back): requests, errors, versions, whether every swap took, and the swap's
    cost: p99 latency of the requests in flight during a swap vs the others, pooled over the
    rounds (one round has ~100 requests in flight during its swaps: its p99 is its maximum),
    with each round's ratio."""
    reload = f"{url}/admin/reload"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    requests, errors, versions, swaps, during, steady, ratios, took = 0, [], {}, [], [], [], [], []

    async def one_round():
        timeline, windows = [], []

        async def swap(http: httpx.AsyncClient, move) -> dict:
            move()
            started = time.perf_counter()
            answer = (await http.post(reload, headers=headers)).json()
            windows.append((started, time.perf_counter()))
            return answer

        load = asyncio.create_task(
            hammer(f"{url}/predict", images, 16, total=1000, timeline=timeline)
        )
        await asyncio.sleep(1.0)
        async with httpx.AsyncClient(timeout=120) as http:
            first = await swap(http, lambda: registry.promote("2", reason="bench: swap"))
            await asyncio.sleep(0.5)
            back = await swap(http, lambda: registry.rollback("bench: swap back", to="1"))
        return await load, first, back, timeline, windows

    for _ in range(rounds):
        (_, latencies, failed, answered), first, back, timeline, windows = asyncio.run(one_round())
        requests += len(latencies)
        errors += failed
        for version, n in answered.items():
            versions[version] = versions.get(version, 0) + n
        swaps += [first["version"] == "2", back["version"] == "1"]
        hit = [
            any(start < end and start + latency > begin for begin, end in windows)
            for start, latency in timeline
        ]
        now = [latency for (_, latency), h in zip(timeline, hit, strict=True) if h]
        rest = [latency for (_, latency), h in zip(timeline, hit, strict=True) if not h]
        during, steady = during + now, steady + rest
        ratios.append(float(np.percentile(now, 99) / np.percentile(rest, 99)))
        took += [end - begin for begin, end in windows]
    cost = (
        float(np.percentile(during, 99)),
        float(np.percentile(steady, 99)),
        len(during),
        took,
        ratios,
    )
    return requests, errors, versions, all(swaps), cost


async def flood(url: str, make_files, clients: int, seconds: float) -> tuple[dict, int]:
    """Clients posting ``make_files()`` for ``seconds``: (answers by status, and by model
    version for the 200s; connection errors such as resets)."""
    statuses: dict = {}
    broken = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    deadline = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal broken
        while time.perf_counter() < deadline:
            try:
                answer = await http.post(url, files=make_files())
                key = answer.status_code
                if key == 200:
                    key = f"200 v{answer.json()['model_version']}"
                statuses[key] = statuses.get(key, 0) + 1
            except httpx.TransportError as exc:
                broken += 1
                key = f"{type(exc).__name__}: {exc}"[:80]
                statuses[key] = statuses.get(key, 0) + 1

    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return statuses, broken


def hogs(n: int) -> list[subprocess.Popen]:
    """CPU-bound processes (the kind of neighbour a shared machine has)."""
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
        for _ in range(n)
    ]


def overload(url: str, images: list[bytes], registry, seconds: float) -> dict:
    """The three overload targets (see the module docstring)."""
    reload = f"{url}/admin/reload"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    results = {}

    async def hogs_and_swaps():
        single = lambda: {"image": ("x.jpg", images[0], "image/jpeg")}  # noqa: E731
        load = asyncio.create_task(flood(f"{url}/predict", single, 32, seconds))
        async with httpx.AsyncClient(timeout=300) as http:
            moves = (
                lambda: registry.promote("2", reason="bench: swap"),
                lambda: registry.rollback("bench: swap back", to="1"),
            )
            for move in moves:
                await asyncio.sleep(seconds / 4)
                move()
                await http.post(reload, headers=headers)
        return await load

    neighbours = hogs(2)
    try:
        results["hogs"] = asyncio.run(hogs_and_swaps())
    finally:
        for hog in neighbours:
            hog.kill()
            hog.wait()

    batch = lambda: [("images", (f"{i}.jpg", images[i], "image/jpeg")) for i in range(64)]  # noqa: E731
    results["batches"] = asyncio.run(flood(f"{url}/predict_batch", batch, 64, seconds))

    big = io.BytesIO()
    gradient = np.linspace(0, 255, 6000, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(gradient, (6000, 1))] * 3, axis=-1)).save(big, "PNG")
    large = big.getvalue()

    async def healthz_under_large():
        files = lambda: {"image": ("big.png", large, "image/png")}  # noqa: E731
        load = asyncio.create_task(flood(f"{url}/predict", files, 16, seconds))
        times = []
        async with httpx.AsyncClient(timeout=60) as http:
            await asyncio.sleep(1)
            while not load.done():
                started = time.perf_counter()
                await http.get(f"{url}/healthz")
                times.append(time.perf_counter() - started)
                await asyncio.sleep(0.1)
        return await load, times

    (statuses, broken), times = asyncio.run(healthz_under_large())
    results["large"] = (statuses, broken, float(np.percentile(times, 99)), len(large))
    return results


def log_cost(tmp: Path, uri: str, images: list[bytes], seconds: float, rounds: int) -> None:
    """The prediction log's cost: the same server with the log off and on, interleaved
    rounds (this host's speed swings), each keeping its best throughput and p50."""
    servers = {log: start_ours(tmp, uri, log, f"ws-log-{log}") for log in (False, True)}
    best = {False: (0.0, float("inf")), True: (0.0, float("inf"))}
    try:
        for _ in range(rounds):
            for log, (_, url) in servers.items():
                rate, _, errors, _ = asyncio.run(hammer(f"{url}/predict", images, 32, seconds))
                p50 = sequential_p50(f"{url}/predict", images)
                assert not errors, errors[:3]
                best[log] = (max(best[log][0], rate), min(best[log][1], p50))
        logged = sum(1 for _ in (tmp / "ws-log-True" / "predictions" / "images").rglob("*.jpg"))
    finally:
        for process, _ in servers.values():
            os.killpg(process.pid, 15)
            process.wait(30)
    (off_rate, off_p50), (on_rate, on_p50) = best[False], best[True]
    print(f"\nPrediction log: 32 clients, single 32x32 JPEGs, best of {rounds} x {seconds:.0f} s")
    print("| log | req/s | p50 ms (one client) |")
    print("| --- | --- | --- |")
    print(f"| off | {off_rate:.0f} | {off_p50 * 1000:.1f} |")
    print(f"| on (every request) | {on_rate:.0f} | {on_p50 * 1000:.1f} |")
    cost = 1 - on_rate / off_rate
    print(
        f"throughput cost {cost:.1%}, p50 {on_p50 / off_p50:.2f}x (target: <= 5% cost): "
        f"{'ok' if cost <= 0.05 else 'MISSED'}; {logged} distinct images logged"
    )


def _stat(path: str) -> list[str]:
    """The fields of a /proc stat file after the command name (state, ppid, ...)."""
    return Path(path).read_text().rsplit(")", 1)[1].split()


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of ``pid`` and its descendants' threads, by role: the event loop (each
    process's main thread) or another thread (inference, the log writer); Linux."""
    tick = os.sysconf("SC_CLK_TCK")
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            parents[int(entry)] = int(_stat(f"/proc/{entry}/stat")[1])
    found, todo = {}, [pid]
    while todo:
        process = todo.pop()
        todo += [child for child, parent in parents.items() if parent == process]
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{process}/task"):
                fields = _stat(f"/proc/{process}/task/{tid}/stat")
                role = "event loop" if int(tid) == process else "other threads"
                found[role] = found.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return found


def cpu_per_request(tmp: Path, uri: str, model, images: list[bytes], rounds: int) -> None:
    """Where the CPU goes: ours and the ceiling, interleaved rounds of 2,000 requests from 32
    clients, each server's threads' CPU time read from /proc, and the load generator's."""
    import resource

    def client() -> float:
        used = resource.getrusage(resource.RUSAGE_SELF)
        return used.ru_utime + used.ru_stime

    servers = {"ours": start_ours(tmp, uri), "ceiling": start_ceiling(tmp)}
    rows: dict[str, list] = {name: [] for name in servers}
    try:
        for _ in range(rounds):
            for name, (process, url) in servers.items():
                before, mine = thread_cpu(process.pid), client()
                rate, latencies, errors, _ = asyncio.run(
                    hammer(f"{url}/predict", images, 32, total=2000)
                )
                after, n = thread_cpu(process.pid), len(latencies) / 1000
                assert not errors, errors[:3]
                spent = {k: (after[k] - before.get(k, 0.0)) / n for k in after}
                rows[name].append((rate, spent, (client() - mine) / n))
    finally:
        for process, _ in servers.values():
            os.killpg(process.pid, 15)
            process.wait(30)
    x = np.stack([np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for d in images])
    from serving.engines import best_engine

    engine = best_engine(model.model, x[:32]).engine
    batch = np.resize(x, (64, *x.shape[1:]))
    engine(batch)
    started = time.process_time()
    for _ in range(30):
        engine(batch)
    per_image = (time.process_time() - started) / (30 * len(batch)) * 1000
    print(f"\nCPU per request: 32 clients, single 32x32 JPEGs, {rounds} rounds of 2,000 each")
    print("| server | req/s | event loop | other threads | server | load generator | all |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, done in rows.items():
        for rate, spent, load in done:
            loop, other = spent.get("event loop", 0.0), spent.get("other threads", 0.0)
            print(
                f"| {name} | {rate:.0f} | {loop:.2f} ms | {other:.2f} ms | {loop + other:.2f} ms "
                f"| {load:.2f} ms | {loop + other + load:.2f} ms |"
            )
    print(f"The model in process, batch 64: {per_image:.2f} ms of CPU an image.")


def report_swaps(swapped: tuple) -> None:
    requests, errors, versions, swaps_ok, (during, steady, overlapping, took, ratios) = swapped
    print(
        f"Hot swap: {requests} requests from 16 clients, {len(took)} swaps "
        f"({'all done' if swaps_ok else 'NOT ALL DONE'}): {len(errors)} errors, "
        f"answers by version {versions}"
    )
    print(
        f"  swap cost: p99 {during * 1000:.1f} ms over the {overlapping} requests in flight "
        f"during a swap vs {steady * 1000:.1f} ms steady ({during / steady:.2f}x, target <= 2x): "
        f"{'ok' if during <= 2 * steady else 'MISSED'}; per round "
        f"{', '.join(f'{r:.2f}x' for r in ratios)}; the swaps took "
        f"{', '.join(f'{t:.2f} s' for t in took)}"
    )
    if errors:
        print("  first errors:", errors[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--log-cost", action="store_true", help="only the prediction log's cost")
    parser.add_argument("--swap-only", action="store_true", help="only the hot-swap rounds")
    parser.add_argument("--cpu", action="store_true", help="only where the CPU goes (Linux)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds (throughput, --log-cost)"
    )
    parser.add_argument(
        "--swap-rounds",
        type=int,
        default=5,
        help="rounds of 1,000 requests and two swaps (this host stalls every request now and"
        " then for 0.2-0.8 s, with or without a model: p99 over fewer swaps is luck)",
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="refit-bench-serve-"))
    images = jpegs(256)
    uri, (registry, model) = register_builtin(tmp)
    if args.log_cost:
        log_cost(tmp, uri, images, args.seconds, args.rounds)
        return
    if args.cpu:
        cpu_per_request(tmp, uri, model, images, args.rounds)
        return
    ours, url = start_ours(tmp, uri)
    if args.swap_only:
        try:
            report_swaps(swap_under_load(url, images, registry, args.swap_rounds))
        finally:
            os.killpg(ours.pid, 15)
            ours.wait(30)
        return
    baseline, base_url = start_baseline(tmp)
    ceiling_server, ceiling_url = start_ceiling(tmp)
    try:
        engine_note = httpx.get(f"{url}/model").json()["model"]["engine_note"]
        targets = {
            "baseline: FastAPI + model.predict": f"{base_url}/predict",
            "ours: /predict (BentoML, batched)": f"{url}/predict",
            "ours: HTTP ceiling (decode, no model)": f"{ceiling_url}/predict",
        }
        runs = {name: [] for name in targets}  # ours and the ceiling interleaved, per round
        for name in [next(iter(targets))] + [
            n for _ in range(args.rounds) for n in list(targets)[1:]
        ]:
            rate, latencies, errors, _ = asyncio.run(
                hammer(targets[name], images, 32, args.seconds)
            )
            runs[name].append((rate, statistics.median(latencies) * 1000, len(errors)))
        rows = {
            name: (
                statistics.median(r[0] for r in done),
                statistics.median(r[1] for r in done),
                sum(r[2] for r in done),
            )
            for name, done in runs.items()
        }
        round_ratios = [
            a[0] / b[0]
            for a, b in zip(
                runs["ours: /predict (BentoML, batched)"],
                runs["ours: HTTP ceiling (decode, no model)"],
                strict=True,
            )
        ]
        single, batched = in_process(model, images)
        http_p50 = sequential_p50(f"{url}/predict", images)
        floor_p50 = sequential_p50(f"{ceiling_url}/predict", images)
        swapped = swap_under_load(url, images, registry, args.swap_rounds)
        overloaded = overload(url, images, registry, args.seconds)
    finally:
        for process in (ours, baseline, ceiling_server):
            os.killpg(process.pid, 15)
            process.wait(30)
    base = rows["baseline: FastAPI + model.predict"][0]
    ceiling = rows["ours: HTTP ceiling (decode, no model)"][0]
    ours_rate = rows["ours: /predict (BentoML, batched)"][0]
    print(
        f"\nEngine: {engine_note}. 32 clients, single 32x32 JPEGs, {args.seconds:.0f} s each; "
        f"ours and the ceiling: median of {args.rounds} interleaved rounds."
    )
    print(f"{'server':40} {'req/s':>8} {'p50 ms':>8} {'errors':>7} {'x baseline':>11}")
    for name, (rate, p50, errors) in rows.items():
        print(f"{name:40} {rate:8.0f} {p50:8.1f} {errors:7d} {rate / base:10.2f}x")
    print(f"{'model in process, batch 64 (no HTTP)':40} {batched:8.0f} images/s")
    print(
        f"\n/predict vs baseline: {ours_rate / base:.2f}x (target >= 3x); "
        f"vs HTTP ceiling: {ours_rate / ceiling:.2f}x (target >= 0.85x; per round: "
        f"{', '.join(f'{r:.2f}x' for r in round_ratios)})"
    )
    limit = 2 * single * 1000 + 5
    print(
        f"Single image p50: HTTP {http_p50 * 1000:.1f} ms vs in process {single * 1000:.2f} ms "
        f"(target <= 2x + 5 = {limit:.1f} ms): {'ok' if http_p50 * 1000 <= limit else 'MISSED'}"
    )
    print(f"  (the same request to the HTTP ceiling, no model: {floor_p50 * 1000:.1f} ms)")
    report_swaps(swapped)

    print(f"\nOverload ({args.seconds:.0f} s each):")
    statuses, broken = overloaded["hogs"]
    bad = sum(n for code, n in statuses.items() if not str(code).startswith("200"))
    print(
        f"2 CPU hogs, 32 clients, 2 swaps: answers {statuses}, {broken} connection errors "
        f"-> {bad} non-200 (target 0): {'ok' if bad == 0 else 'MISSED'}"
    )
    statuses, broken = overloaded["batches"]
    other = sum(n for code, n in statuses.items() if code != 503 and "200" not in str(code))
    print(
        f"64 clients x predict_batch of 64: answers {statuses}, {broken} resets (target: only "
        f"200/503, no resets): {'ok' if other == 0 and broken == 0 else 'MISSED'}"
    )
    statuses, broken, p99, size = overloaded["large"]
    print(
        f"/healthz p99 while 16 clients send 36 MP PNGs ({size / 1e6:.1f} MB): "
        f"{p99 * 1000:.0f} ms (target < 1000 ms): {'ok' if p99 < 1 else 'MISSED'}; "
        f"their answers {statuses}, {broken} connection errors"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.results import recorded

    with recorded("serve"):
        main()
