"""What a listing found besides its edits: keys it could not use, and how the destination store behaves.

The listing pushes :class:`ListingFindings` to XCom (key ``findings``, next to ``counts``), and the
manifest operator writes it into the run's manifest, so that a skipped key or a store that ignores
conditional writes is on record, not only in a log.
"""

from __future__ import annotations

from pydantic import computed_field

from airflow_bettertoken.protocol.record import Record, record

__all__ = ["FINDINGS_KEY", "MAX_REPORTED_KEYS", "ListingFindings", "SkippedKey", "StoreCheck"]

#: The listing's XCom key for its findings.
FINDINGS_KEY = "findings"
#: Skipped keys listed by name in XCom and the manifest; the rest are only counted.
MAX_REPORTED_KEYS = 100

IGNORED_CONDITIONAL_WRITES = (
    "{prefix} ignores conditional writes: a create-only write (If-None-Match: *) over an existing object "
    "succeeded. Outputs are still looked for before paying, but two edits racing for one output may both "
    "pay and the later one overwrites the earlier (duplicates and overwrites are possible), and the "
    "spend ledger's claims are not atomic there"
)
CANNOT_LIST = (
    "connection cannot s3:ListBucket {bucket}: AWS then answers 403 instead of 404 for a missing key. "
    "Edits go on (a create-only write still never overwrites), but the listing of outputs needs "
    "s3:ListBucket on arn:aws:s3:::{bucket}"
)


@record
class StoreCheck(Record):
    """What the preflight learned about the destination, besides that it can be written.

    :param prefix_uri: the destination prefix that was probed.
    :param conditional_writes: a create-only write over an existing probe was refused, as S3 does.
    :param can_list: the bucket's HEAD answered 200: the role has ``s3:ListBucket``, so missing keys
        answer 404 rather than 403.
    """

    prefix_uri: str
    conditional_writes: bool
    can_list: bool

    @computed_field
    @property
    def warnings(self) -> list[str]:
        bucket = self.prefix_uri[len("s3://") :].split("/", 1)[0]
        found = []
        if not self.conditional_writes:
            found.append(IGNORED_CONDITIONAL_WRITES.format(prefix=self.prefix_uri))
        if not self.can_list:
            found.append(CANNOT_LIST.format(bucket=bucket))
        return found


@record
class SkippedKey:
    """A source key the listing could not turn into an output path, and why."""

    key: str
    reason: str


@record
class ListingFindings(Record):
    """The listing's findings: the keys it skipped (at most :data:`MAX_REPORTED_KEYS` named) and the store.

    :param skipped_keys: the first skipped keys, in key order, each with its reason.
    :param skipped_total: how many keys were skipped in all.
    :param store: what the preflight found, or None when it did not run.
    """

    skipped_keys: tuple[SkippedKey, ...] = ()
    skipped_total: int = 0
    store: StoreCheck | None = None

    @classmethod
    def of(cls, skipped: list[SkippedKey], store: StoreCheck | None) -> ListingFindings:
        return cls(tuple(skipped[:MAX_REPORTED_KEYS]), len(skipped), store)
