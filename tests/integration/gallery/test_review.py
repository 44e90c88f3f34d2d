"""The review gate, end to end: a run of ``bettertoken_reviewed_backfill`` on the emulator and moto,
waiting in its human-in-the-loop task, reviewed through a real API server's review page and answered
through Airflow's REST API.

One run serves every test here, in order: refusals first (no rights, no CSRF token, a foreign Origin),
then one submit that approves 2, rejects 1 and re-edits 1 while another reviewer submits at once; the
gate answered through the REST API publishes the approved images and sends the re-edit once; the
re-edit comes back to the page, where a browser approves it; the second gate's answer ends the run.
"""

from __future__ import annotations

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
from urllib.parse import quote

import pytest
import requests

from airflow_bettertoken.operators._hitl import HAS_HITL
from airflow_bettertoken.protocol.review import Decision
from airflow_bettertoken.storage.review import ReviewStore, review_location
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
NAMES = ["cup", "lamp", "mug", "vase"]
NEW_PROMPT = "Paint the vase cobalt blue, keep the white background"
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

    def __init__(self, server, s3, src: str, out: str, process: subprocess.Popen) -> None:
        self.server, self.s3, self.src, self.out, self.process = server, s3, src, out, process
        self.tokens: dict[str, str] = {}
        self.run_id = ""
        self.browser_reviewed = False

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

    def submit(self, user: str, fields: dict[str, str], **headers: str) -> requests.Response:
        return requests.post(
            self.review_url,
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
        listed = self.s3.list_objects_v2(Bucket=self.out, Prefix="catalog-edited/")
        return sorted(o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith(".png"))


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
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def fields(token: str | None, decisions: dict[tuple[str, int], str], **more: str) -> dict[str, str]:
    data = {f"decision.{task}.{index}": action for (task, index), action in decisions.items()}
    if token is not None:
        data["csrf_token"] = token
    return {**data, **more}


@pytest.fixture(scope="module")
def flow(server, s3, sandbox, airflow_db):
    sandbox.emulator.control.reset()
    src, out = f"rin-{uuid.uuid4().hex[:8]}", f"rout-{uuid.uuid4().hex[:8]}"
    for bucket in (src, out):
        s3.create_bucket(Bucket=bucket)
    for seed, name in enumerate(NAMES):
        s3.put_object(Bucket=src, Key=f"catalog/{name}.png", Body=sample_image(160, 120, seed=seed))
    conf = {"in_bucket": src, "out_bucket": out, "review": True, "size": "1024x1024"}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_SCRIPT, DAG_ID, json.dumps(conf)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    found = Flow(server, s3, src, out, process)

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


def test_round_one_stages_every_edit_and_publishes_nothing(flow):
    record = flow.record()
    staged = sorted(key.rsplit("/", 1)[-1] for key in record["items"])
    assert staged == [f"{name}.png" for name in NAMES]
    assert {item["state"] for item in record["items"].values()} == {"pending"}
    assert flow.published() == []
    assert sorted(rows_of(flow.page().text)) == [f"{name}.png" for name in NAMES]


def test_users_without_rights_on_the_dag_get_403_on_every_write_route(flow):
    token = csrf_of(flow.page("admin").text)
    row = rows_of(flow.page().text)["mug.png"]
    # alice may read only another DAG; viewer may read this one but change nothing.
    assert flow.page("alice").status_code == 403
    assert flow.submit("alice", fields(token, {row: "approve"})).status_code == 403
    assert flow.answer("review", "alice").status_code == 403
    assert flow.page("viewer").status_code == 200
    viewer_token = csrf_of(flow.page("viewer").text)
    assert flow.submit("viewer", fields(viewer_token, {row: "approve"})).status_code == 403
    assert flow.answer("review", "viewer").status_code == 403
    assert flow.submit(None, fields(token, {row: "approve"})).status_code == 401
    assert all(not item["history"] for item in flow.record()["items"].values())


def test_a_submit_without_the_csrf_token_or_from_another_origin_is_refused(flow):
    html = flow.page().text
    token, row = csrf_of(html), rows_of(html)["mug.png"]
    admins = csrf_of(flow.page("admin").text)
    answers = {
        "no token": flow.submit("reviewer", fields(None, {row: "approve"})),
        "another user's token": flow.submit("reviewer", fields(admins, {row: "approve"})),
        "a forged token": flow.submit("reviewer", fields(token[:-4] + "0000", {row: "approve"})),
        "a foreign Origin": flow.submit(
            "reviewer", fields(token, {row: "approve"}), Origin="https://evil.example"
        ),
    }
    assert {why: answer.status_code for why, answer in answers.items()} == dict.fromkeys(answers, 403)
    assert "CSRF" in answers["no token"].text and "Origin" in answers["a foreign Origin"].text
    assert all(not item["history"] for item in flow.record()["items"].values())


def test_one_submit_decides_four_images_while_another_reviewer_submits_at_once(flow):
    html = flow.page().text
    rows = rows_of(html)
    mine = fields(
        csrf_of(html),
        {rows["mug.png"]: "approve", rows["lamp.png"]: "approve", rows["cup.png"]: "reject"}
        | {rows["vase.png"]: "reedit"},
        **{f"prompt.{rows['vase.png'][0]}.{rows['vase.png'][1]}": NEW_PROMPT},
        **{f"size.{rows['vase.png'][0]}.{rows['vase.png'][1]}": "1024x1024"},
    )
    theirs = fields(csrf_of(flow.page("admin").text), {rows["mug.png"]: "approve"})
    start = threading.Barrier(4)
    answers: dict[str, requests.Response] = {}

    def send(name: str, user: str, data: dict[str, str]) -> None:
        start.wait()
        answers[name] = flow.submit(user, data, Origin=flow.server.url)

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
    items = {key.rsplit("/", 1)[-1]: item for key, item in flow.record()["items"].items()}
    by = {name: sorted(d["by"] for d in item["history"]) for name, item in items.items()}
    # Four submits at once, and no decision lost: each one is in the history, with who made it.
    assert by == {
        "mug.png": ["admin", "admin", "admin", "reviewer"],
        "lamp.png": ["reviewer"],
        "cup.png": ["reviewer"],
        "vase.png": ["reviewer"],
    }
    vase = items["vase.png"]["history"][-1]
    assert (vase["action"], vase["prompt"], vase["size"]) == ("reedit", NEW_PROMPT, "1024x1024")


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
    assert flow.published() == ["catalog-edited/lamp.png", "catalog-edited/mug.png"]
    staged_mug = next(k for k in flow.record()["items"] if k.endswith("/mug.png"))
    kept = flow.s3.head_object(Bucket=flow.out, Key=staged_mug)["Metadata"]
    assert flow.s3.head_object(Bucket=flow.out, Key="catalog-edited/mug.png")["Metadata"] == kept
    posts = sandbox.emulator.control.stats()["requests"]
    prompts = [post["fields"].get("prompt") for post in posts]
    assert len(posts) == 5 and prompts.count(NEW_PROMPT) == 1
    reedit = next(post for post in posts if post["fields"].get("prompt") == NEW_PROMPT)
    assert reedit["fields"]["size"] == "1024x1024"
    states = {k.rsplit("/", 1)[-1]: v["state"] for k, v in flow.record()["items"].items()}
    assert states == {
        "cup.png": "rejected",
        "lamp.png": "published",
        "mug.png": "published",
        "vase.png": "reedited",
        "vase.r2.png": "pending",
    }
    page = flow.page().text
    assert list(rows_of(page)) == ["vase.r2.png"]  # the re-edit came back for review, alone
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
        assert len(widths) == 10 and all(width > 0 for width in widths), widths  # 5 rows, source and output
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


def test_the_second_gate_publishes_the_reedit_and_the_manifest_records_the_review(flow):
    if not flow.browser_reviewed:  # without Chromium, the same decision through the page's form
        html = flow.page().text
        (row,) = rows_of(html).values()
        assert flow.submit("reviewer", fields(csrf_of(html), {row: "approve"})).status_code == 303
    assert flow.answer("review_reedits").status_code == 200
    output, _ = flow.process.communicate(timeout=180)
    Path(os.environ.get("BETTERTOKEN_REVIEW_LOG", "/dev/null")).write_text(output)
    assert re.search(r"^RUN \S+ success$", output, re.M), output[-2000:]

    assert flow.published() == [
        "catalog-edited/lamp.png",
        "catalog-edited/mug.png",
        "catalog-edited/vase.png",
    ]
    manifest_key = next(
        o["Key"]
        for o in flow.s3.list_objects_v2(Bucket=flow.out, Prefix="catalog-edited/_manifests/")["Contents"]
    )
    manifest = json.loads(flow.s3.get_object(Bucket=flow.out, Key=manifest_key)["Body"].read())
    review = manifest["review"]
    assert review["counts"] == {
        "images": 5,
        "approved": 3,
        "published": 3,
        "rejected": 1,
        "reedited": 1,
        "pending": 0,
        "rounds": 2,
    }
    assert [(r["round"], r["by"], r["timed_out"]) for r in review["rounds"]] == [
        (1, "reviewer", False),
        (2, "reviewer", False),
    ]
    assert manifest["spend"]["posts"] == 5  # four edits and the paid re-edit
    summary = json.loads(
        flow.s3.get_object(Bucket=flow.out, Key="catalog-edited/_manifest.json")["Body"].read()
    )
    assert summary["review"] == {"approved": 3, "rejected": 1, "reedited": 1, "published": 3}
