"""The review gate, end to end: a run of ``bettertoken_reviewed_backfill`` on the emulator and moto,
waiting in its human-in-the-loop task, reviewed through a real API server's review page and answered
through Airflow's REST API.

One run serves every test here, in order, on a catalog whose names look like the gate's own:
``lamp.png``, ``lamp.r2.png`` and ``x.png.png`` beside ``cup.png`` and ``mug.png``. Its S3 requests go
through a counting proxy, which shows that nothing under the publish prefix is touched before the
gate is answered. Refusals first (no rights, no CSRF token, a foreign Origin, an oversized body), then
a submit partly refused, then one submit that approves 3 and re-edits ``lamp.png`` while another
reviewer submits at once; the gate answered through the REST API publishes the approved images under
their own names and sends the re-edit once; the re-edit comes back to the page, where a browser
approves it; the second gate's answer publishes it as ``lamp.png``. A rerun then pays for nothing.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from html import unescape
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import pytest
import requests

from airflow_bettertoken.operators._hitl import HAS_HITL
from airflow_bettertoken.protocol.review import Decision
from airflow_bettertoken.storage.review import ReviewStore, review_location, staging_prefix
from airflow_bettertoken.testing.samples import sample_image
from tests.integration.gallery.browser import chromium, require_chromium


def _dag_test_answers_hitl() -> bool:
    """dag.test() waits for a HITL answer from another process from Airflow 3.3 (awaiting_input). On 3.1
    and 3.2 it runs the HITL trigger inline, and its in-process supervisor cannot serve the trigger's
    request (``Unhandled request GetHITLDetailResponse``): the task fails at once, though a real
    triggerer runs it. So the run this module needs can only be made with dag.test() from 3.3."""
    import airflow.sdk.exceptions

    return hasattr(airflow.sdk.exceptions, "TaskAwaitingInput")


pytestmark = [
    pytest.mark.skipif(
        not HAS_HITL,
        reason="Airflow 3.0 has no human-in-the-loop tasks: the review gate fails at parse time there "
        "(tests/integration/test_dags.py checks that message)",
    ),
    pytest.mark.skipif(
        HAS_HITL and not _dag_test_answers_hitl(),
        reason="dag.test() on Airflow 3.1 and 3.2 runs the HITL trigger inline and cannot serve its "
        "request (Unhandled request GetHITLDetailResponse); the review run needs 3.3's awaiting_input",
    ),
]

DAG_ID = "bettertoken_reviewed_backfill"
ROOT = Path(__file__).resolve().parents[3]
NAMES = ["cup.png", "lamp.png", "lamp.r2.png", "mug.png", "x.png.png"]
NEW_PROMPT = "Make the lamp shade cobalt blue, keep the white background"
PUBLISH = "catalog-edited/"
RUN_SCRIPT = (
    "import json, sys\n"
    "from tests.airflow_versions import load_dag\n"
    "run = load_dag(sys.argv[1]).test(run_conf=json.loads(sys.argv[2]))\n"
    "print('RUN', run.run_id, run.state)\n"
)


def wait_for(predicate, timeout: float = 150, what: str = "it"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.3)
    return value


class Flow:
    """The run under review, and how to talk to it as each user."""

    def __init__(self, server, s3, src: str, out: str, process: subprocess.Popen, counted) -> None:
        self.server, self.s3, self.src, self.out, self.process = server, s3, src, out, process
        self.tokens: dict[str, str] = {}
        self.run_id = ""
        self.browser_reviewed = False
        #: The proxy every S3 request of the run goes through, and where this run's requests start in it.
        self.counted, self.first_request = counted, len(counted.requests)
        self.first_deleted = len(counted.deleted_keys)

    def headers(self, user: str | None) -> dict[str, str]:
        if user is None:
            return {}
        if user not in self.tokens:
            self.tokens[user] = self.server.token(user)
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    @property
    def api(self) -> str:
        return f"{self.server.url}/api/v2/dags/{DAG_ID}/dagRuns/{quote(self.run_id, safe='')}"

    @property
    def review_url(self) -> str:
        return f"{self.server.url}/bettertoken/dags/{DAG_ID}/runs/{quote(self.run_id, safe='')}/review"

    def state(self, task_id: str) -> str | None:
        answer = requests.get(
            f"{self.api}/taskInstances/{task_id}", headers=self.headers("admin"), timeout=30
        )
        return answer.json().get("state") if answer.status_code == 200 else None

    def wait_for_gate(self, task_id: str) -> None:
        def waiting() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the run ended before {task_id} waited: {self.process.stdout.read()}")
            return self.state(task_id) in ("deferred", "awaiting_input")

        wait_for(waiting, what=f"{task_id} to wait for its answer")

    def page(self, user: str = "reviewer") -> requests.Response:
        return requests.get(self.review_url, headers=self.headers(user), timeout=60)

    def submit(
        self, user: str, token: str | None, fields: dict[str, str], **headers: str
    ) -> requests.Response:
        query = f"?{urlencode({'csrf_token': token})}" if token is not None else ""
        return requests.post(
            self.review_url + query,
            data=fields,
            headers={**self.headers(user), **headers},
            allow_redirects=False,
            timeout=60,
        )

    def answer(self, task_id: str, user: str = "reviewer", option: str = "Apply the decisions"):
        return requests.patch(
            f"{self.api}/taskInstances/{task_id}/-1/hitlDetails",
            json={"chosen_options": [option], "params_input": {}},
            headers=self.headers(user),
            timeout=60,
        )

    def record(self):
        location = review_location(self.out, DAG_ID, self.run_id)
        return json.loads(self.s3.get_object(Bucket=location.bucket, Key=location.key)["Body"].read())

    def published(self) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=self.out, Prefix=PUBLISH)
        keys = [o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith(".png")]
        return sorted(key.removeprefix(PUBLISH) for key in keys)

    def items(self) -> dict[str, dict]:
        """The record's items by where they are staged: ``(round, name)``."""
        found = {}
        for key, item in self.record()["items"].items():
            prefix = staging_prefix(self.out, DAG_ID, self.run_id, item["round"])
            assert key == prefix.removeprefix(f"s3://{self.out}/") + item["name"], key
            found[(item["round"], item["name"])] = item
        return found


def rows_of(html: str) -> dict[str, tuple[str, int]]:
    """Each row of the review page by its label: the task instance its form fields name."""
    found = {}
    for article in re.findall(r'<article class="edit">(.*?)</article>', html, re.S):
        label = unescape(re.search(r"<h2>(.*?)</h2>", article).group(1))
        ref = re.search(r'name="decision\.([A-Za-z0-9_.-]+)\.(-?\d+)"', article)
        if ref:
            found[label] = (ref.group(1), int(ref.group(2)))
    return found


def csrf_of(html: str) -> str:
    return unescape(re.search(r'<form method="post" action="review\?csrf_token=([^"]+)"', html).group(1))


def fields(decisions: dict[tuple[str, int], str], **more: str) -> dict[str, str]:
    return {**{f"decision.{task}.{index}": action for (task, index), action in decisions.items()}, **more}


def run_dag(conf: dict, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RUN_SCRIPT, DAG_ID, json.dumps(conf)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def flow(server, s3, sandbox, airflow_db, counted_s3):
    sandbox.emulator.control.reset()
    src, out = f"rin-{uuid.uuid4().hex[:8]}", f"rout-{uuid.uuid4().hex[:8]}"
    for bucket in (src, out):
        s3.create_bucket(Bucket=bucket)
    for seed, name in enumerate(NAMES):
        s3.put_object(Bucket=src, Key=f"catalog/{name}", Body=sample_image(160, 120, seed=seed))
    conf = {"in_bucket": src, "out_bucket": out, "review": True, "size": "1024x1024"}
    # The run's S3 requests go through the counting proxy.
    aws = json.dumps(sandbox.aws_connection(counted_s3.endpoint))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AIRFLOW_CONN_AWS_DEFAULT": aws}
    found = Flow(server, s3, src, out, None, counted_s3)
    found.process = process = run_dag(conf, env)
    found.conf, found.env = conf, env

    def the_run() -> str | None:
        answer = requests.get(
            f"{server.url}/api/v2/dags/{DAG_ID}/dagRuns", headers=found.headers("admin"), timeout=30
        )
        runs = answer.json().get("dag_runs", []) if answer.status_code == 200 else []
        return next((r["dag_run_id"] for r in runs if (r.get("conf") or {}).get("out_bucket") == out), None)

    try:
        found.run_id = wait_for(the_run, what="the reviewed run to start")
        found.wait_for_gate("review")
        yield found
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
            process.wait(timeout=30)


def test_round_one_stages_every_edit_under_its_own_name_and_publishes_nothing(flow):
    items = flow.items()
    assert sorted(items) == [(1, name) for name in NAMES]  # staged in round 1's prefix, under their names
    assert {item["state"] for item in items.values()} == {"pending"}
    assert flow.published() == []
    assert sorted(rows_of(flow.page().text)) == NAMES


def test_nothing_under_the_publish_prefix_is_written_probed_or_deleted_before_the_gate_is_answered(flow):
    made = flow.counted.requests[flow.first_request :]
    publish_path = f"/{flow.out}/{PUBLISH}"
    stage_path = "/" + staging_prefix(flow.out, DAG_ID, flow.run_id).removeprefix("s3://")
    assert len(made) > 20  # the run's listing, preflight, five edits and the gate came this way
    # No request names an object under the publish prefix: the listing only LISTs it (a GET of the bucket).
    assert [(m, path) for m, path in made if path.startswith(publish_path)] == []
    mentions = [(m, path) for m, path in made if quote(PUBLISH, safe="") in path or PUBLISH in path]
    assert mentions and all(m == "GET" and urlsplit(path).path == f"/{flow.out}" for m, path in mentions)
    # The preflight probed the staging prefix, where the edits were written, and deleted its probe there.
    probes = [
        (m, path)
        for m, path in made
        if ".bettertoken-preflight" in path and "/_bettertoken/spill" not in path
    ]
    assert {m for m, _ in probes} >= {"PUT", "HEAD"}
    assert all(path.startswith(stage_path) for _, path in probes), probes
    # Deletes name their keys in the body (DeleteObjects): only the probes, none under the publish prefix.
    deleted = flow.counted.deleted_keys[flow.first_deleted :]
    assert deleted and all(key.endswith(".bettertoken-preflight") for key in deleted), deleted
    assert not [key for key in deleted if key.startswith(PUBLISH)]


def test_users_without_rights_on_the_dag_get_403_on_every_write_route(flow):
    token = csrf_of(flow.page("admin").text)
    row = rows_of(flow.page().text)["mug.png"]
    # alice may read only another DAG; viewer may read this one but change nothing.
    assert flow.page("alice").status_code == 403
    assert flow.submit("alice", token, fields({row: "approve"})).status_code == 403
    assert flow.answer("review", "alice").status_code == 403
    assert flow.page("viewer").status_code == 200
    viewer_token = csrf_of(flow.page("viewer").text)
    assert flow.submit("viewer", viewer_token, fields({row: "approve"})).status_code == 403
    assert flow.answer("review", "viewer").status_code == 403
    assert flow.submit(None, token, fields({row: "approve"})).status_code == 401
    assert all(not item["history"] for item in flow.record()["items"].values())


def test_a_submit_without_the_csrf_token_or_from_another_origin_is_refused(flow):
    html = flow.page().text
    token, row = csrf_of(html), rows_of(html)["mug.png"]
    admins = csrf_of(flow.page("admin").text)
    decision = fields({row: "approve"})
    answers = {
        "no token": flow.submit("reviewer", None, decision),
        "the token in the body": flow.submit("reviewer", None, {**decision, "csrf_token": token}),
        "another user's token": flow.submit("reviewer", admins, decision),
        "a forged token": flow.submit("reviewer", token[:-4] + "0000", decision),
        "a foreign Origin": flow.submit("reviewer", token, decision, Origin="https://evil.example"),
    }
    assert {why: answer.status_code for why, answer in answers.items()} == dict.fromkeys(answers, 403)
    assert "CSRF" in answers["no token"].text and "Origin" in answers["a foreign Origin"].text
    assert all(not item["history"] for item in flow.record()["items"].values())


def post_headers_only(flow, user: str, token: str | None, length: int) -> tuple[int, str]:
    """POST that declares ``length`` bytes and sends none: a route that read the body would wait for them."""
    url = urlsplit(flow.review_url + (f"?{urlencode({'csrf_token': token})}" if token else ""))
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.putrequest("POST", f"{url.path}?{url.query}" if url.query else url.path)
        for name, value in {
            **flow.headers(user),
            "Content-Type": "application/x-www-form-urlencoded",
            "Content-Length": str(length),
        }.items():
            conn.putheader(name, value)
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    finally:
        conn.close()


def test_a_bad_token_or_an_oversized_body_is_refused_before_the_body_is_read(flow):
    token = csrf_of(flow.page().text)
    # 100 MB declared, none sent: each answer comes at once, so nothing waited to read the body.
    assert post_headers_only(flow, "reviewer", None, 100_000_000)[0] == 403
    status, text = post_headers_only(flow, "reviewer", token, 100_000_000)
    assert status == 413 and "over" in text
    assert all(not item["history"] for item in flow.record()["items"].values())


def test_a_submit_partly_refused_saves_the_rest_and_says_which_and_why(flow):
    html = flow.page().text
    rows = rows_of(html)
    answer = flow.submit(
        "reviewer", csrf_of(html), fields({rows["cup.png"]: "approve", rows["lamp.png"]: "reedit"})
    )
    assert answer.status_code == 200
    notice = unescape(re.search(r'<p class="notice">(.*?)</p>', answer.text).group(1))
    assert notice == (
        "Saved 1 decisions (cup.png). Not saved, 1: lamp.png: a re-edit needs a revised prompt: "
        "write it in the row's prompt box."
    )
    items = flow.items()
    assert [d["action"] for d in items[(1, "cup.png")]["history"]] == ["approve"]
    assert items[(1, "lamp.png")]["history"] == []


def test_one_submit_decides_four_images_while_another_reviewer_submits_at_once(flow):
    html = flow.page().text
    rows = rows_of(html)
    lamp = rows["lamp.png"]
    mine = fields(
        {rows["mug.png"]: "approve", rows["lamp.r2.png"]: "approve", rows["x.png.png"]: "approve"}
        | {lamp: "reedit"},
        **{f"prompt.{lamp[0]}.{lamp[1]}": NEW_PROMPT, f"size.{lamp[0]}.{lamp[1]}": "1024x1024"},
    )
    theirs = fields({rows["mug.png"]: "approve"})
    tokens = {"reviewer": csrf_of(html), "admin": csrf_of(flow.page("admin").text)}
    start = threading.Barrier(4)
    answers: dict[str, requests.Response] = {}

    def send(name: str, user: str, data: dict[str, str]) -> None:
        start.wait()
        answers[name] = flow.submit(user, tokens[user], data, Origin=flow.server.url)

    # The reviewer's one submit, and three of another reviewer's at the same moment.
    senders = [("reviewer-0", "reviewer", mine)] + [(f"admin-{n}", "admin", theirs) for n in range(3)]
    threads = [threading.Thread(target=send, args=sender) for sender in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert {name: answer.status_code for name, answer in answers.items()} == {
        "reviewer-0": 303,
        "admin-0": 303,
        "admin-1": 303,
        "admin-2": 303,
    }
    items = {name: item for (_, name), item in flow.items().items()}
    by = {name: sorted(d["by"] for d in item["history"]) for name, item in items.items()}
    # Four submits at once, and no decision lost: each one is in the history, with who made it.
    assert by == {
        "cup.png": ["reviewer"],
        "mug.png": ["admin", "admin", "admin", "reviewer"],
        "lamp.png": ["reviewer"],
        "lamp.r2.png": ["reviewer"],
        "x.png.png": ["reviewer"],
    }
    lamp = items["lamp.png"]["history"][-1]
    assert (lamp["action"], lamp["prompt"], lamp["size"]) == ("reedit", NEW_PROMPT, "1024x1024")


def test_two_writers_of_the_record_at_once_both_keep_their_decision_the_loser_in_four_requests(
    flow, counted_s3
):
    """The conditional write itself, on a real moto through the counting proxy: the loser re-reads."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    location = review_location(flow.out, DAG_ID, flow.run_id)
    first, second = (ReviewStore(S3Hook(aws_conn_id="aws_counted"), location) for _ in range(2))
    before = len(counted_s3.requests)
    first_record = first.read()
    second.read()  # both read the same version before either writes
    mug = next(key for key in first_record.items if key.endswith("mug.png"))
    at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    first.update(lambda r: r.decide({mug: Decision.checked("approve", "carol", at)})[0])
    second.update(lambda r: r.decide({mug: Decision.checked("approve", "dave", at)})[0])
    made = [method for method, path in counted_s3.requests[before:] if "_bettertoken/reviews/" in path]

    assert made == ["GET", "GET", "PUT", "PUT", "GET", "PUT"]  # the second PUT lost (412), re-read, won
    history = [d["by"] for d in flow.record()["items"][mug]["history"]]
    assert history[-2:] == ["carol", "dave"]


def test_answering_the_gate_through_the_rest_api_publishes_the_approved_and_sends_the_reedit_once(
    flow, sandbox
):
    answer = flow.answer("review")
    assert answer.status_code == 200, answer.text[:300]
    assert flow.answer("review").status_code == 409  # a second answer is refused by Airflow

    flow.wait_for_gate("review_reedits")
    # Each under its own name: lamp.r2.png is a source's name here, not a re-edit's.
    assert flow.published() == ["cup.png", "lamp.r2.png", "mug.png", "x.png.png"]
    staged_mug = staging_prefix(flow.out, DAG_ID, flow.run_id).removeprefix(f"s3://{flow.out}/") + "mug.png"
    kept = flow.s3.head_object(Bucket=flow.out, Key=staged_mug)["Metadata"]
    assert flow.s3.head_object(Bucket=flow.out, Key=PUBLISH + "mug.png")["Metadata"] == kept
    posts = sandbox.emulator.control.stats()["requests"]
    prompts = [post["fields"].get("prompt") for post in posts]
    assert len(posts) == 6 and prompts.count(NEW_PROMPT) == 1
    reedit = next(post for post in posts if post["fields"].get("prompt") == NEW_PROMPT)
    assert reedit["fields"]["size"] == "1024x1024"
    states = {where: item["state"] for where, item in flow.items().items()}
    assert states == {
        (1, "cup.png"): "published",
        (1, "lamp.png"): "reedited",
        (1, "lamp.r2.png"): "published",
        (1, "mug.png"): "published",
        (1, "x.png.png"): "published",
        (2, "lamp.png"): "pending",  # the re-edit, in round 2's own prefix: no other image's key
    }
    page = flow.page().text
    assert list(rows_of(page)) == ["lamp.png, round 2"]  # the re-edit came back for review, alone
    assert "re-edit of" in page and NEW_PROMPT in page


def test_a_reviewer_approves_the_reedit_in_chromium(flow, tmp_path):
    require_chromium()
    from selenium.webdriver.common.by import By

    from tests.integration.gallery.test_gallery_browser import log_in

    browser = chromium(1300, 1400)
    try:
        log_in(browser, flow.server, "reviewer")
        browser.get(flow.review_url)
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "article.edit"), 60, "the review page")
        images = browser.find_elements(By.CSS_SELECTOR, "article.edit img")
        wait_for(lambda: all(browser.execute_script("return arguments[0].complete", i) for i in images), 60)
        widths = [browser.execute_script("return arguments[0].naturalWidth", i) for i in images]
        assert len(widths) == 12 and all(width > 0 for width in widths), widths  # 6 rows, source and output
        approve = browser.find_element(By.CSS_SELECTOR, "input[type=radio][value=approve]")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", approve)
        approve.click()
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(tmp_path / "review.png"))
        if os.environ.get("BETTERTOKEN_REVIEW_SCREENSHOT"):
            browser.save_screenshot(os.environ["BETTERTOKEN_REVIEW_SCREENSHOT"])
        browser.find_element(By.CSS_SELECTOR, ".submit button").click()
        notice = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".notice"), 60, "the saved notice")
        assert notice[0].text == "Saved 1 decisions."
    finally:
        browser.quit()
    flow.browser_reviewed = True


def test_the_second_gate_publishes_the_reedit_under_its_originals_name_and_the_manifest_records_it(flow):
    if not flow.browser_reviewed:  # without Chromium, the same decision through the page's form
        html = flow.page().text
        (row,) = rows_of(html).values()
        assert flow.submit("reviewer", csrf_of(html), fields({row: "approve"})).status_code == 303
    assert flow.answer("review_reedits").status_code == 200
    output, _ = flow.process.communicate(timeout=180)
    Path(os.environ.get("BETTERTOKEN_REVIEW_LOG", "/dev/null")).write_text(output)
    assert re.search(r"^RUN \S+ success$", output, re.M), output[-2000:]

    assert flow.published() == ["cup.png", "lamp.png", "lamp.r2.png", "mug.png", "x.png.png"]
    reedit = staging_prefix(flow.out, DAG_ID, flow.run_id, 2).removeprefix(f"s3://{flow.out}/") + "lamp.png"
    made = flow.s3.head_object(Bucket=flow.out, Key=reedit)["Metadata"]
    assert flow.s3.head_object(Bucket=flow.out, Key=PUBLISH + "lamp.png")["Metadata"] == made
    assert flow.items()[(2, "lamp.png")]["published_uri"] == f"s3://{flow.out}/{PUBLISH}lamp.png"
    manifest_key = next(
        o["Key"] for o in flow.s3.list_objects_v2(Bucket=flow.out, Prefix=PUBLISH + "_manifests/")["Contents"]
    )
    manifest = json.loads(flow.s3.get_object(Bucket=flow.out, Key=manifest_key)["Body"].read())
    review = manifest["review"]
    assert review["counts"] == {
        "images": 6,
        "approved": 5,
        "published": 5,
        "rejected": 0,
        "reedited": 1,
        "pending": 0,
        "rounds": 2,
    }
    assert [(r["round"], r["by"], r["timed_out"]) for r in review["rounds"]] == [
        (1, "reviewer", False),
        (2, "reviewer", False),
    ]
    assert manifest["spend"]["posts"] == 6  # five edits and the paid re-edit
    summary = json.loads(flow.s3.get_object(Bucket=flow.out, Key=PUBLISH + "_manifest.json")["Body"].read())
    assert summary["review"] == {"approved": 5, "rejected": 0, "reedited": 1, "published": 5}


def test_a_rerun_with_review_pays_for_nothing(flow, sandbox):
    posts = len(sandbox.emulator.control.stats()["requests"])
    output, _ = run_dag(flow.conf, flow.env).communicate(timeout=300)
    assert re.search(r"^RUN \S+ success$", output, re.M), output[-2000:]
    assert len(sandbox.emulator.control.stats()["requests"]) == posts
    assert flow.published() == ["cup.png", "lamp.png", "lamp.r2.png", "mug.png", "x.png.png"]
