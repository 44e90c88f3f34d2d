"""What the README says about S3 is true: its IAM policy grants what the provider asks of S3, and its
example of a refused encrypted upload is the message the provider prints."""

from __future__ import annotations

import json
import re
from pathlib import Path

from botocore.exceptions import ClientError

from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.s3_errors import PERMISSIONS, storage_error
from airflow_bettertoken.storage.s3_extra_args import S3ExtraArgs

README = Path(__file__).resolve().parents[2] / "README.md"


def _policy() -> dict:
    section = README.read_text().split("## S3 permissions: the least-privilege policy", 1)[1]
    [document] = re.findall(r"```json\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    return json.loads(document)


def test_the_policy_grants_every_action_the_provider_uses_and_nothing_else():
    statements = _policy()["Statement"]
    granted = set()
    for statement in statements:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"]
        granted.update([actions] if isinstance(actions, str) else actions)
    assert granted == {action for action, _scope in PERMISSIONS.values()} | {
        "kms:GenerateDataKey",
        "kms:Decrypt",
    }


def test_list_bucket_is_granted_on_buckets_and_object_actions_on_objects():
    for statement in _policy()["Statement"]:
        resources = statement["Resource"]
        for resource in [resources] if isinstance(resources, str) else resources:
            if statement["Action"] == "s3:ListBucket":
                assert re.fullmatch(r"arn:aws:s3:::[a-z0-9-]+", resource)
            elif resource.startswith("arn:aws:s3:::"):
                assert "/" in resource, resource


def test_the_encryption_message_in_the_readme_is_the_one_the_preflight_prints():
    [example] = re.findall(r"```text\n(Preflight: S3 PutObject.*?)```", README.read_text(), re.S)
    probe = S3Location("my-out", "catalog-edited/.bettertoken-preflight")
    said = re.search(r"with connection 'aws_default': (User:.*?policy)\.", " ".join(example.split()))
    denied = {
        "Error": {"Code": "AccessDenied", "Message": said[1]},
        "ResponseMetadata": {"HTTPStatusCode": 403},
    }
    error = storage_error(ClientError(denied, "PutObject"), "PutObject", probe, "aws_default", S3ExtraArgs())
    assert " ".join(example.split()) == f"Preflight: {error}"
