"""``make bench``, a catalog chain: the LISTs of a 100,000-key chain in chunks of 1,000, and reading results.

1. The chain: 100,000 sources on moto, listed by the listing operator in 100 chained runs of 1,000
   edits, each run's planned outputs then written (as its edits would) and settled in the chain's
   record (as its manifest task would). LIST requests and seconds of listing, by run and in all.
   Before the chain's record every run listed every source and every output; that listing is
   timed at three runs of the chain (no output yet, half, all but one chunk) and summed over the
   runs, since its LIST pages grow by exactly one per 1,000 outputs.
2. Reading the results of a mapped task of 1,024: execution API calls made by ``materialize``, in a
   ``dag.test()`` run, counted at the task runner's channel to its supervisor; and by indexing each
   map index, as it did before.

The figures go to RESULTS.md under their own heading; goals are reported, not asserted.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MARKER = "## Catalog chain"
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bettertoken-bench-"))
sys.path.insert(0, str(ROOT))

KEYS, CHUNK = 100_000, 1_000


def source_key(n: int) -> str:
    return f"catalog/dept-{n % 40:02}/item-{n:06}.jpg"


def output_key(source: str) -> str:
    return source.replace("catalog/", "edited/", 1).replace(".jpg", ".png")


class Moto:
    """moto's S3 server behind the counting proxy, with ``aws_default`` pointed at it."""

    def __enter__(self) -> Moto:
        from moto.server import ThreadedMotoServer

        from tests.integration.s3_fault_proxy import S3FaultProxy

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's line per request
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.proxy = S3FaultProxy(f"http://{host}:{port}").start()
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(
            {
                "conn_type": "aws",
                "login": "bench",
                "password": "bench-secret",
                "extra": {"endpoint_url": self.proxy.endpoint, "region_name": "us-east-1"},
            }
        )
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        self.s3 = S3Hook(aws_conn_id="aws_default").get_conn()
        return self

    def __exit__(self, *exc: object) -> None:
        self.proxy.stop()
        self.moto.stop()

    def lists(self) -> int:
        return sum(1 for method, path in self.proxy.requests if method == "GET" and "list-type=2" in path)

    def put_all(self, bucket: str, keys: list[str]) -> None:
        """Seed objects straight into moto's in-process store: 200,000 PUTs over HTTP would take an
        hour here, and only the listing's requests are measured."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        for key in keys:
            backend.put_object(bucket, key, b"x")


def listing(run_id: str):
    from airflow_bettertoken.operators.list_images import BetterTokenListImagesOperator

    op = BetterTokenListImagesOperator(
        task_id="list",
        source_prefix="s3://bench-in/catalog/",
        dest_prefix="s3://bench-out/edited/",
        max_edits=CHUNK,
        preflight=False,
    )
    ti = SimpleNamespace(dag_id="bench", run_id=run_id, xcom_push=lambda key, value: None)
    return op, {"ti": ti}


def settle(s3_hook, run_id: str, edits: list[dict]) -> None:
    """What the run's manifest task does to the chain's record once its edits are done."""
    from airflow_bettertoken.storage.chain import ChainState, RunResult, chain_location
    from airflow_bettertoken.storage.records import ConditionalRecord
    from airflow_bettertoken.storage.typed_record import TypedRecord

    done = [edit["source"].removeprefix("s3://bench-in/") for edit in edits]
    result = RunResult(run_id, len(edits), len(edits), 0, 0, time.time() - 60, time.time())
    record = TypedRecord(ChainState, ConditionalRecord(s3_hook, chain_location("bench-out", "bench", run_id)))
    record.update(
        lambda current: current.after_run(result, done=done, failed_for_good={}, failed_may_retry=[])
    )


def measure_chain(moto: Moto) -> dict:
    """The chain, run by run; at three of its runs, also the full listing that every run made before."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from airflow_bettertoken.storage.chain import next_chunk_run_id
    from airflow_bettertoken.storage.locations import S3Location
    from airflow_bettertoken.storage.objects import ImageStore

    for bucket in ("bench-in", "bench-out"):
        moto.s3.create_bucket(Bucket=bucket)
    moto.put_all("bench-in", [source_key(n) for n in range(KEYS)])
    hook = S3Hook(aws_conn_id="aws_default")
    store = ImageStore(hook)
    measured_before = {0, KEYS // CHUNK // 2, KEYS // CHUNK - 1}
    run_id, runs, before = "chain", [], []
    while True:
        if len(runs) in measured_before:
            moto.proxy.requests.clear()
            started = time.monotonic()
            store.list_keys(S3Location("bench-in", "catalog/"))
            store.list_keys(S3Location("bench-out", "edited/"))
            seconds = time.monotonic() - started
            before.append({"outputs": len(runs) * CHUNK, "lists": moto.lists(), "seconds": seconds})
        op, context = listing(run_id)
        moto.proxy.requests.clear()
        started = time.monotonic()
        edits = op.execute(context)
        runs.append({"run_id": run_id, "lists": moto.lists(), "seconds": time.monotonic() - started})
        if not edits:
            break
        moto.put_all("bench-out", [output_key(e["source"].removeprefix("s3://bench-in/")) for e in edits])
        settle(hook, run_id, edits)
        run_id = next_chunk_run_id(run_id)
    return {"runs": runs, "before": before}


READ_RESULTS_DAG = textwrap.dedent(
    """
    import json
    import pendulum
    from airflow.sdk import DAG, task

    from airflow_bettertoken.operators._xcom import materialize

    with DAG("bench_read_results", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:

        @task
        def item(n):
            return {"n": n}

        @task
        def read(results):
            from airflow.sdk.execution_time import task_runner

            # Counted on the class: an instance's ``send`` may be read-only (dag.test's in-process one).
            comms_class, calls = type(task_runner.SUPERVISOR_COMMS), []
            send = comms_class.send
            comms_class.send = lambda self, *args, **kwargs: calls.append(1) or send(self, *args, **kwargs)
            materialize(results)
            one_call = len(calls)
            calls.clear()
            [results[index] for index in range(len(results))]
            comms_class.send = send
            print("READ-RESULTS " + json.dumps({"slice": one_call, "indexing": len(calls)}))

        read(item.expand(n=list(range(1024))))
    """
)


def measure_reading_results() -> dict:
    folder = Path(tempfile.mkdtemp(prefix="bettertoken-bench-dags-"))
    (folder / "bench_read_results.py").write_text(READ_RESULTS_DAG)
    env = {
        **os.environ,
        "AIRFLOW__CORE__DAGS_FOLDER": str(folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(ROOT),
    }
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True
    )
    code = (
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"DagBag({str(folder)!r}).get_dag('bench_read_results').test()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    line = next((part for part in (done.stdout + done.stderr).split("READ-RESULTS ")[1:2]), None)
    if line is None:
        raise RuntimeError(f"the results were not read: {(done.stdout + done.stderr)[-2000:]}")
    return json.loads(line[: line.index("}") + 1])


def main() -> None:
    reading = measure_reading_results()  # the quicker one first
    with Moto() as moto:
        chain = measure_chain(moto)
    runs, points = chain["runs"], chain["before"]
    after_lists = sum(run["lists"] for run in runs)
    after_seconds = sum(run["seconds"] for run in runs)
    # Before, run k (from 0) listed every source and the k x 1,000 outputs made so far.
    edit_runs = KEYS // CHUNK
    before_lists = sum(points[0]["lists"] + k * CHUNK // 1000 for k in range(edit_runs))
    per_output_page = (points[2]["seconds"] - points[0]["seconds"]) / (points[2]["outputs"] / 1000)
    before_seconds = sum(points[0]["seconds"] + k * per_output_page for k in range(edit_runs))
    print(
        f"Chain of {len(runs)} runs over {KEYS:,} keys in chunks of {CHUNK:,}: {after_lists} LISTs, "
        f"{after_seconds:.0f} s of listing (first run {runs[0]['lists']} LISTs, {runs[0]['seconds']:.1f} s; "
        f"then {max(r['lists'] for r in runs[1:])} LISTs at most); before: {before_lists:,} LISTs, "
        f"about {before_seconds:,.0f} s"
    )
    print(f"Reading 1,024 results: {reading['slice']} execution API call(s); by index: {reading['indexing']}")
    later = [run["lists"] for run in runs[1:]]
    section = [
        MARKER,
        "",
        f"From `benchmarks/chain.py` (part of `make bench`) on {time.strftime('%Y-%m-%d')}, same machine,",
        "moto's S3 server behind a proxy that counts every request.",
        "",
        "| figure | with the chain's record | before |",
        "|---|---|---|",
        f"| LIST requests of a chain over {KEYS:,} keys in chunks of {CHUNK:,} ({len(runs)} runs) "
        f"| {after_lists:,} | {before_lists:,} |",
        f"| seconds of listing over the whole chain | {after_seconds:,.0f} s "
        f"| about {before_seconds:,.0f} s |",
        f"| LISTs of the first run; of each later run | {runs[0]['lists']}; {min(later)} to {max(later)} "
        f"| {points[0]['lists']} growing to {points[2]['lists']} |",
        f"| execution API calls to read the results of 1,024 mapped edits | {reading['slice']} "
        f"| {reading['indexing']} |",
        "",
        "Before, each run listed every source and every output: "
        f"{points[0]['lists']} LISTs with no output yet ({points[0]['seconds']:.1f} s), "
        f"{points[1]['lists']} at half ({points[1]['seconds']:.1f} s) and {points[2]['lists']} with all but "
        f"one chunk done ({points[2]['seconds']:.1f} s), measured at those runs of the chain; the chain's",
        "total sums those, one LIST page more per 1,000 outputs. The chain's first run still lists",
        "everything once, to count the catalog.",
        "",
    ]
    results = HERE / "RESULTS.md"
    existing = results.read_text() if results.exists() else ""
    head, _, rest = existing.partition(MARKER)
    tail = rest[rest.find("\n## ") :] if "\n## " in rest else ""
    results.write_text(head.rstrip() + "\n\n" + "\n".join(section) + tail)
    print(f"Wrote the chain figures to {results}")


if __name__ == "__main__":
    main()
