"""``make bench``: the plugin's own cost per edit against the naive way, measured in one run.

For each case (a PNG the loopback server returns at once) and each scope (the hook alone, and
the operator's whole path with S3 on a local moto server), ours and the baseline alternate,
each measurement in a fresh child process (benchmarks/measure.py). The table gives medians,
the ratio of ours to the baseline, and the goals; RESULTS.md keeps the last figures.
"""

from __future__ import annotations

import base64
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import boto3
from PIL import Image

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
MB = 1_000_000


def make_cases() -> dict[str, Path]:
    """The answers to serve, as JSON bodies on disk: built once, then reused."""
    from airflow_bettertoken.testing.samples import sample_image

    OUT.mkdir(exist_ok=True)

    def photo_like(width: int, height: int) -> Image.Image:
        # Smooth shapes with sensor-like grain: compresses about as well as a photo does.
        shapes = Image.open(io.BytesIO(sample_image(width, height, seed=2))).convert("RGB")
        return Image.blend(shapes, Image.effect_noise((width, height), 40).convert("RGB"), 0.15)

    builders = {
        "1024x1024 typical": lambda: photo_like(1024, 1024),
        "3840x2160 noise": lambda: Image.frombytes("RGB", (3840, 2160), os.urandom(3840 * 2160 * 3)),
        "3840x2160 photo-like": lambda: photo_like(3840, 2160),
    }
    bodies = {}
    for name, build in builders.items():
        path = OUT / (name.replace(" ", "-") + ".json")
        if not path.exists():
            png = io.BytesIO()
            build().save(png, format="PNG", compress_level=1 if "noise" in name else 6)
            body = {"created": 1, "data": [{"b64_json": base64.b64encode(png.getvalue()).decode()}]}
            path.write_text(json.dumps({**body, "usage": {"total_tokens": 1}}))
            (OUT / (path.stem + ".size")).write_text(str(len(png.getvalue())))
        bodies[name] = path
    return bodies


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, endpoint
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto server did not start")


def measure(impl: str, scope: str, env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, str(HERE / "measure.py"), impl, scope], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{impl}/{scope} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    cases = make_cases()
    reference = OUT / "reference.jpg"
    Image.new("RGB", (640, 480), (120, 80, 40)).save(reference, format="JPEG")
    moto, s3_endpoint = start_moto()
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="b",
        aws_secret_access_key="b",
        region_name="us-east-1",
    )
    for bucket in ("bench-in", "bench-out"):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket="bench-in", Key="reference.jpg", Body=reference.read_bytes())
    rows = []
    try:
        for name, body in cases.items():
            png_bytes = int((OUT / (body.stem + ".size")).read_text())
            server = subprocess.Popen(
                [sys.executable, str(HERE / "fixed_server.py"), str(body)], stdout=subprocess.PIPE, text=True
            )
            port = server.stdout.readline().strip()
            env = {
                **os.environ,
                "BENCH_API": f"http://127.0.0.1:{port}/v1",
                "BENCH_S3": s3_endpoint,
                "BENCH_REFERENCE": str(reference),
                "AIRFLOW_HOME": str(OUT / "airflow-home"),
                # Blocks of 4 MiB and more always come from mmap and go back on free, so that one
                # call's peak is not hidden by memory the warm-up left in the heap. Same for both sides.
                "MALLOC_MMAP_THRESHOLD_": str(4 << 20),
            }
            try:
                for scope in ("hook", "operator"):
                    figures: dict[str, list[dict]] = {"ours": [], "baseline": []}
                    for run in range(RUNS):
                        order = ("ours", "baseline") if run % 2 == 0 else ("baseline", "ours")
                        for impl in order:
                            figures[impl].append(measure(impl, scope, env))
                    rows.append(summarize(name, scope, png_bytes, figures))
                    print_rows(rows[-1:], header=len(rows) == 1)
            finally:
                server.terminate()
    finally:
        moto.terminate()
    write_results(rows)


GOALS = {
    ("3840x2160 noise", "hook", "peak RSS growth"): ("<= 1.25x PNG", lambda r: r["ours_x_png"] <= 1.25),
    ("3840x2160 noise", "hook", "CPU s"): ("<= 0.4x baseline", lambda r: r["ratio"] <= 0.4),
    ("3840x2160 noise", "operator", "peak RSS growth"): ("<= 1.5x PNG", lambda r: r["ours_x_png"] <= 1.5),
}


def summarize(case: str, scope: str, png_bytes: int, figures: dict[str, list[dict]]) -> list[dict]:
    out = []
    for figure, key, scale in (
        ("CPU s", "cpu_s", 1),
        ("peak RSS growth", "peak_growth_bytes", MB),
        ("wall s", "wall_s", 1),
    ):
        ours = statistics.median(f[key] for f in figures["ours"]) / scale
        base = statistics.median(f[key] for f in figures["baseline"]) / scale
        row = {
            "case": case,
            "scope": scope,
            "figure": figure,
            "png_mb": png_bytes / MB,
            "ours": ours,
            "baseline": base,
            "ratio": ours / base if base else float("nan"),
            "ours_x_png": ours * MB / png_bytes if key == "peak_growth_bytes" else None,
            "base_x_png": base * MB / png_bytes if key == "peak_growth_bytes" else None,
        }
        goal = GOALS.get((case, scope, figure))
        row["goal"] = f"{goal[0]}: {'met' if goal[1](row) else 'NOT met'}" if goal else ""
        out.append(row)
    return out


def format_row(r: dict) -> list[str]:
    unit = " MB" if r["figure"] == "peak RSS growth" else ""
    ours = f"{r['ours']:.3f}{unit}" + (
        f" ({r['ours_x_png']:.2f}x PNG)" if r["ours_x_png"] is not None else ""
    )
    base = f"{r['baseline']:.3f}{unit}" + (
        f" ({r['base_x_png']:.2f}x PNG)" if r["base_x_png"] is not None else ""
    )
    return [r["case"], r["scope"], r["figure"], ours, base, f"{r['ratio']:.2f}", r["goal"]]


CLUSTER_MARKER = "## Cluster run"
COLUMNS = ["case", "scope", "figure", "ours", "baseline", "ours/baseline", "goal"]


def print_rows(groups: list[list[dict]], header: bool) -> None:
    widths = [20, 8, 15, 26, 26, 13, 0]
    if header:
        print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for group in groups:
        for r in group:
            print("  ".join(c.ljust(w) for c, w in zip(format_row(r), widths, strict=True)), flush=True)


def write_results(groups: list[list[dict]]) -> None:
    lines = [
        "# Benchmark results",
        "",
        f"Made by `make bench` on {time.strftime('%Y-%m-%d')}, on {platform.machine()} with "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}.",
        f"Medians of {RUNS} runs per figure, ours and the baseline alternating, each in a fresh process",
        "after a warm-up call. The loopback server answers at once: the figures are the client's own cost.",
        "The baseline is the openai SDK's `images.edit`, `base64.b64decode` and, for the operator scope,",
        "boto3 `get_object`/`put_object`. Peak RSS growth is VmHWM (reset through `/proc/self/clear_refs`)",
        "minus VmRSS before the call, with `MALLOC_MMAP_THRESHOLD_=4194304` for both sides, so that",
        "large buffers come from mmap and go back to the system on free.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(format_row(r)) + " |" for group in groups for r in group]
    results = HERE / "RESULTS.md"
    # The cluster figures below the marker come from the cluster test, not from here: keep them.
    kept = results.read_text().partition(CLUSTER_MARKER)[2] if results.exists() else ""
    results.write_text("\n".join(lines) + "\n" + (f"\n{CLUSTER_MARKER}{kept}" if kept else ""))
    print(f"\nWrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
