"""The operator against the emulator and moto's S3 server, called as a task would call it."""

from __future__ import annotations

import json

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_bettertoken.exceptions import BetterTokenInputError, BetterTokenOutputExistsError
from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
from airflow_bettertoken.protocol.png import verify_png
from airflow_bettertoken.testing.samples import sample_image

PNG = sample_image(300, 200, "png")
JPEG = sample_image(200, 300, "jpg", seed=1)

XCOM_KEYS = {
    "output_uri", "bucket", "key", "width", "height", "requested_size", "size_matches", "bytes", "sha256",
    "model", "source_uris", "revised_prompt", "usage", "request_id", "calls", "elapsed_s", "skipped",
    "aws_conn_id", "billed_calls", "ledger_uri", "format",
}  # fmt: skip


def edit(**kwargs) -> BetterTokenImageEditOperator:
    kwargs.setdefault("task_id", "edit")
    kwargs.setdefault("prompt", "studio shot")
    return BetterTokenImageEditOperator(**kwargs)


def test_edit_writes_a_valid_png_with_metadata_and_returns_small_xcom(s3, buckets, emulator, task_context):
    s3.put_object(Bucket=buckets.src, Key="set/mug.jpg", Body=JPEG)
    emulator.configure(size_map={"1024x1024": "1000x1000"})

    xcom = edit(
        source=f"s3://{buckets.src}/set/mug.jpg", dest=f"s3://{buckets.out}/x/", size="1024x1024"
    ).execute(task_context)

    assert set(xcom) == XCOM_KEYS
    assert json.loads(json.dumps(xcom)) == xcom  # JSON-safe
    assert xcom["output_uri"] == f"s3://{buckets.out}/x/mug.png"
    assert (xcom["width"], xcom["height"], xcom["size_matches"]) == (1000, 1000, False)
    assert (xcom["skipped"], xcom["calls"]) == (False, 1)
    obj = s3.get_object(Bucket=buckets.out, Key="x/mug.png")
    body = obj["Body"].read()
    assert verify_png(body).width == 1000
    assert len(body) == xcom["bytes"]
    assert obj["ContentType"] == "image/png"
    assert obj["Metadata"]["width"] == "1000"
    assert obj["Metadata"]["requested-size"] == "1024x1024"
    assert obj["Metadata"]["model"] == "gpt-image-2"
    assert json.loads(obj["Metadata"]["sources"]) == [f"s3://{buckets.src}/set/mug.jpg"]
    assert obj["Metadata"]["png-sha256"] == xcom["sha256"]


def test_a_list_of_sources_is_one_multi_reference_edit(s3, buckets, emulator, task_context):
    for name, data in (("a.png", PNG), ("b.jpg", JPEG)):
        s3.put_object(Bucket=buckets.src, Key=name, Body=data)
    sources = [f"s3://{buckets.src}/a.png", f"s3://{buckets.src}/b.jpg"]

    xcom = edit(source=sources, dest=f"s3://{buckets.out}/combined.png").execute(task_context)

    assert xcom["source_uris"] == sources
    [received] = emulator.stats()["requests"]
    assert [(f["field"], f["filename"]) for f in received["files"]] == [
        ("image[]", "a.png"),
        ("image[]", "b.jpg"),
    ]


def test_skip_makes_no_second_call_and_reports_the_existing_object(s3, buckets, emulator, task_context):
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)
    op = edit(source=f"s3://{buckets.src}/a.png", dest=f"s3://{buckets.out}/a.png")
    first = op.execute(task_context)
    second = edit(source=f"s3://{buckets.src}/a.png", dest=f"s3://{buckets.out}/a.png").execute(task_context)

    assert emulator.stats()["posts"] == 1
    assert second["skipped"] is True
    assert (second["width"], second["height"], second["sha256"]) == (
        first["width"],
        first["height"],
        first["sha256"],
    )


def test_skip_reads_the_size_from_a_foreign_objects_png_header(s3, buckets, emulator, task_context):
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)
    s3.put_object(Bucket=buckets.out, Key="a.png", Body=sample_image(77, 55))

    xcom = edit(source=f"s3://{buckets.src}/a.png", dest=f"s3://{buckets.out}/a.png").execute(task_context)

    assert (xcom["skipped"], xcom["width"], xcom["height"]) == (True, 77, 55)
    assert emulator.stats()["posts"] == 0


def test_replace_pays_again_and_overwrites(s3, buckets, emulator, task_context):
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)
    s3.put_object(Bucket=buckets.out, Key="a.png", Body=sample_image(77, 55))

    xcom = edit(
        source=f"s3://{buckets.src}/a.png", dest=f"s3://{buckets.out}/a.png", if_exists="replace"
    ).execute(task_context)

    assert emulator.stats()["paid"] == 1
    assert xcom["skipped"] is False
    assert verify_png(s3.get_object(Bucket=buckets.out, Key="a.png")["Body"].read()).width == xcom["width"]


def test_fail_refuses_an_existing_output_without_paying(s3, buckets, emulator, task_context):
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)
    s3.put_object(Bucket=buckets.out, Key="a.png", Body=PNG)

    with pytest.raises(AirflowFailException, match="exists and if_exists='fail'") as info:
        edit(source=f"s3://{buckets.src}/a.png", dest=f"s3://{buckets.out}/a.png", if_exists="fail").execute(
            task_context
        )
    assert isinstance(info.value.__cause__, BetterTokenOutputExistsError)
    assert emulator.stats()["posts"] == 0


@pytest.mark.parametrize("mode", ["record", "warn"])
def test_a_size_mismatch_is_recorded_or_warned_and_stored(s3, buckets, emulator, task_context, capfd, mode):
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)
    emulator.configure(size_map={"2048x2048": "2000x2000"})
    xcom = edit(
        source=f"s3://{buckets.src}/a.png",
        dest=f"s3://{buckets.out}/a.png",
        size="2048x2048",
        on_size_mismatch=mode,
    ).execute(task_context)
    assert (xcom["width"], xcom["size_matches"]) == (2000, False)
    assert ("Size mismatch" in capfd.readouterr().out) is (mode == "warn")
    assert s3.head_object(Bucket=buckets.out, Key="a.png")["Metadata"]["width"] == "2000"


def test_a_size_mismatch_can_fail_the_task_keeping_the_image(s3, buckets, emulator, task_context, tmp_path):
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)
    emulator.configure(size_map={"2048x2048": "2000x2000"})
    op = {"source": f"s3://{buckets.src}/a.png", "dest": f"s3://{buckets.out}/a.png", "size": "2048x2048"}
    with pytest.raises(AirflowFailException, match="asked for 2048x2048, got 2000x2000") as info:
        edit(**op, on_size_mismatch="fail", spill_dir=str(tmp_path)).execute(task_context)
    # Kept in S3 beside the spend ledger, where a retry on any worker finds it; not on this disk.
    kept = f"s3://{buckets.out}/_bettertoken/spill/a.png."
    assert kept in str(info.value)
    assert list(tmp_path.iterdir()) == []
    assert not s3.list_objects_v2(Bucket=buckets.out, Prefix="a.png").get("Contents")
    # Accepting the size later uploads the kept image instead of paying again, and drops the copy.
    xcom = edit(**op, on_size_mismatch="record", spill_dir=str(tmp_path)).execute(task_context)
    assert (xcom["width"], emulator.stats()["paid"]) == (2000, 1)
    assert not s3.list_objects_v2(Bucket=buckets.out, Prefix="_bettertoken/spill/").get("Contents")


def test_two_sources_for_one_output_are_caught(s3, buckets, emulator, task_context):
    for name in ("a/x.png", "b/x.png"):
        s3.put_object(Bucket=buckets.src, Key=name, Body=PNG)
    edit(source=f"s3://{buckets.src}/a/x.png", dest=f"s3://{buckets.out}/edited/").execute(task_context)
    with pytest.raises(AirflowFailException, match="two inputs map to one output key"):
        edit(source=f"s3://{buckets.src}/b/x.png", dest=f"s3://{buckets.out}/edited/").execute(task_context)
    assert emulator.stats()["posts"] == 1


@pytest.mark.parametrize(
    ("key", "body", "message"),
    [
        ("missing.png", None, "does not exist"),
        ("notes.png", b"just some text, not an image", "not PNG, JPEG or WEBP"),
    ],
    ids=["missing-source", "non-image-source"],
)
def test_bad_sources_fail_for_good_before_any_post(s3, buckets, emulator, task_context, key, body, message):
    if body is not None:
        s3.put_object(Bucket=buckets.src, Key=key, Body=body)
    with pytest.raises(AirflowFailException, match=message):
        edit(source=f"s3://{buckets.src}/{key}", dest=f"s3://{buckets.out}/edited/").execute(task_context)
    assert emulator.stats()["posts"] == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": "1000x1000"}, "size '1000x1000' is not allowed"),
        ({"if_exists": "overwrite"}, "if_exists='overwrite' is not allowed"),
        ({"on_size_mismatch": "ignore"}, "on_size_mismatch='ignore' is not allowed"),
        ({"prompt": "  "}, "prompt must be a non-empty string"),
        ({"dest": "s3://out/a.jpg"}, "must end in .png"),
        ({"api_retry": {"max_atempts": 2}}, "unknown retry options"),
    ],
    ids=["size", "if_exists", "on_size_mismatch", "prompt", "dest", "retry"],
)
def test_bad_arguments_fail_at_parse_time(kwargs, message):
    arguments = {"source": "s3://in/a.png", "dest": "s3://out/edited/", **kwargs}
    with pytest.raises(Exception, match=message) as info:
        edit(**arguments)
    assert "BetterToken" in type(info.value).__name__


def test_templated_arguments_are_checked_when_the_task_runs(s3, buckets, emulator, task_context):
    op = edit(
        source=f"s3://{buckets.src}/a.png", dest=f"s3://{buckets.out}/edited/", size="{{ params.size }}"
    )
    op.size = "999x999"  # what the template rendered to
    with pytest.raises(AirflowFailException, match="size '999x999' is not allowed"):
        op.execute(task_context)
    assert emulator.stats()["posts"] == 0


def test_errors_are_input_errors_at_parse_time():
    with pytest.raises(BetterTokenInputError):
        edit(source="s3://in/a.png", dest="s3://out/edited/", size="huge")


def test_api_retry_is_checked_at_parse_time_and_the_old_retry_argument_is_gone():
    op = edit(source="s3://in/a.png", dest="s3://out/edited/", api_retry={"max_attempts": 2})
    assert op.hook.api_retry == {"max_attempts": 2}
    with pytest.raises(Exception, match="unknown retry options"):
        edit(source="s3://in/a.png", dest="s3://out/edited/", api_retry={"max_atempts": 2})
    # Nothing is released yet, so no shim: Airflow refuses an argument the operator does not take.
    with pytest.raises(Exception, match="retry"):
        edit(source="s3://in/a.png", dest="s3://out/edited/", retry={"max_attempts": 2})
