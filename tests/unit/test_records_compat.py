"""Records written by the release before the records were typed (``tests/fixtures/records/``) still load.

A catalog half done before an upgrade is finished after it: its ledgers, chain, manifests and XCom
must read as they were written, renamed fields included.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_bettertoken.exceptions import BetterTokenRecordError
from airflow_bettertoken.operators.next_chunk import ChunkDecision
from airflow_bettertoken.protocol.result import EditFailure, EditResult, EditXCom
from airflow_bettertoken.protocol.spend import Outcome, OutputLedger, RunBreaker, RunSpend
from airflow_bettertoken.storage.chain import ChainState
from airflow_bettertoken.storage.findings import ListingFindings
from airflow_bettertoken.storage.listing import ListingCounts
from airflow_bettertoken.storage.run_manifest import RunManifest, Summary, fold_into_summary

FIXTURES = Path(__file__).parents[1] / "fixtures" / "records"
UNPRICED = {"usage": None, "cost": None, "cost_estimated": False, "currency": None, "size": None}
SPEND = RunSpend(posts=2, paid=2, images_stored=1, billed_without_image=1)


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_the_chain_loads_with_its_renamed_fields():
    state = ChainState.load(fixture("chain.json"), "chain.json")
    assert state.failed_may_retry == ("catalog/item-2.png",)  # "retry" in the old record
    [(key, failure)] = state.failed_for_good.items()  # "failed" in the old record
    assert (key, failure.error, failure.run_id) == ("catalog/item-0.png", "BetterTokenInputError", "chain")
    assert failure.for_good  # every failure the chain keeps is, though old records do not say so
    assert (state.images, state.done, state.pending, state.watermark) == (6, 1, 4, "catalog/item-2.png")
    assert state.runs[0].spend == state.spend == SPEND


def test_the_chain_is_written_back_under_the_new_names_and_reads_again():
    state = ChainState.load(fixture("chain.json"), "chain.json")
    document = json.loads(json.dumps(state.dump()))
    assert {"failed_may_retry", "failed_for_good"} <= document.keys() and "retry" not in document
    # Only the fields a chain's failure has: a catalog may keep thousands.
    assert document["failed_for_good"]["catalog/item-0.png"].keys() == {
        "error",
        "reason",
        "for_good",
        "run_id",
    }
    assert ChainState.load(document, "chain.json") == state


@pytest.mark.parametrize("name", ["ledger_stored.json", "ledger_spilled.json", "ledger_claimed.json"])
def test_each_ledger_loads_and_dumps_as_it_was_written_with_its_calls_renamed(name):
    document = fixture(name)
    ledger = OutputLedger.load(document, name)
    written = json.loads(json.dumps(ledger.dump()))
    # Format 2 names an edit's calls "calls" and the one that gave the image "image_call"; a call's
    # cost fields, added since, are written at their defaults: unpriced.
    renamed = {"attempts": "calls", "image_attempt": "image_call"}
    edits = [{renamed.get(k, k): v for k, v in entry.items()} for entry in document["edits"]]
    for entry in edits:
        entry["calls"] = [{**call, **UNPRICED} for call in entry["calls"]]
    assert written == {**document, "format": 2, "edits": edits}
    assert OutputLedger.load(written, name) == ledger


def test_the_ledgers_say_what_was_paid_and_who_holds_the_output():
    stored = OutputLedger.load(fixture("ledger_stored.json"), "stored")
    [entry] = stored.edits
    assert (entry.billed_calls, entry.stored is not None, stored.claim) == (1, True, None)
    spilled = OutputLedger.load(fixture("ledger_spilled.json"), "spilled")
    [entry] = spilled.edits
    assert (entry.billed_calls, entry.image_call, entry.stored) == (1, 1, None)
    result = EditResult.from_spill_record(b"\x89PNG", entry.spilled_result, "spilled")
    assert (result.width, result.requested_size, result.attempts) == (1024, "1024x1024", 1)
    claimed = OutputLedger.load(fixture("ledger_claimed.json"), "claimed")
    [entry] = claimed.edits
    assert [a.outcome for a in entry.calls] == [Outcome.MAYBE_BILLED, Outcome.OPEN]
    assert claimed.claim.holder.hostname == "worker-1" and entry.refusals[0].why == "run"
    assert entry.billed_calls == 2


def test_the_xcom_is_written_with_its_calls_renamed_in_a_new_format():
    xcom = EditXCom.load(fixture("edit_xcom.json"), "edit_xcom.json")
    assert (xcom.dump()["format"], xcom.dump()["calls"], "attempts" in xcom.dump()) == (2, 1, False)
    assert EditXCom.load(xcom.dump(), "again") == xcom


def test_the_breaker_loads():
    breaker = RunBreaker.load(fixture("breaker.json"), "breaker.json")
    assert (breaker.streak, breaker.tripped) == (1, False)
    assert breaker.dump() == fixture("breaker.json")


def test_the_run_manifest_and_the_summary_load_and_fold_on():
    manifest = RunManifest.load(fixture("run_manifest.json"), "run_manifest.json")
    assert (manifest.counts.planned, manifest.counts.failed, manifest.spend) == (3, 2, SPEND)
    assert [(f.for_good, f.error) for f in manifest.failures] == [
        (True, "BetterTokenInputError"),
        (False, "BetterTokenUploadError"),
    ]
    assert manifest.outputs[0].nbytes == 27889 and manifest.findings.skipped_total == 1
    assert manifest.listing.remaining == manifest.remaining == 3
    summary = Summary.load(fixture("summary.json"), "summary.json")
    assert (summary.runs, summary.images_done, summary.spend) == (1, 1, SPEND)
    assert summary.recent_runs[0].counted.spend == SPEND
    # The same run written again is not counted twice; the summary goes on from the old record.
    again = fold_into_summary(summary, manifest, None)
    assert (again.runs, again.images_done, again.spend, again.usage) == (1, 1, SPEND, summary.usage)


def test_the_xcom_records_load():
    xcom = EditXCom.load(fixture("edit_xcom.json"), "edit_xcom.json")
    assert (xcom.nbytes, xcom.calls, xcom.billed_calls, xcom.size_matches) == (27889, 1, 1, True)
    skipped = EditXCom.load(fixture("edit_xcom_skipped.json"), "edit_xcom_skipped.json")
    assert (skipped.skipped, skipped.calls) == (True, 0)
    for name, for_good in (("edit_failure_for_good.json", True), ("edit_failure_may_retry.json", False)):
        failure = EditFailure.load(fixture(name), name)
        assert failure.for_good is for_good and failure.dest.startswith("s3://records-out/edited/")
    findings = ListingFindings.load(fixture("findings_xcom.json"), "findings_xcom.json")
    assert findings.skipped_keys[0].key == "catalog//no-safe-path.png" and findings.store is None
    counts = ListingCounts.load(fixture("counts_xcom.json"), "counts_xcom.json")
    assert (counts.images, counts.planned, counts.remaining) == (6, 3, 3)
    assert ChunkDecision.load({"next_run_id": None, "reason": "no images remain"}, "decision").reason


def test_a_broken_record_names_the_object_and_the_field():
    document = fixture("ledger_claimed.json")
    document["edits"][0]["attempts"][0]["outcome"] = "free"
    where = "s3://records-out/_bettertoken/ledger/edited/held.png.json"
    with pytest.raises(BetterTokenRecordError) as info:
        OutputLedger.load(document, where)
    assert str(info.value).startswith(
        f"{where} is not a valid OutputLedger record: edits.0.attempts.0.outcome"
    )
