"""Apache Airflow provider for BetterToken's gpt-image-2 image edit API.

What a DAG author needs, in one import::

    from airflow_bettertoken import BetterTokenImageEditOperator, catalog_backfill

The names load lazily, on first use: Airflow's ProvidersManager imports this package (for
``get_provider_info``) in processes that must stay light, so ``import airflow_bettertoken`` loads none
of the operators, the hook or Airflow's task SDK.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_bettertoken.exceptions import (
        BetterTokenAPIError,
        BetterTokenAuthenticationError,
        BetterTokenBadRequestError,
        BetterTokenBudgetError,
        BetterTokenClaimLostError,
        BetterTokenConfigError,
        BetterTokenError,
        BetterTokenInputError,
        BetterTokenNotFoundError,
        BetterTokenOutputExistsError,
        BetterTokenPermissionError,
        BetterTokenRateLimitError,
        BetterTokenRecordConflictError,
        BetterTokenRecordError,
        BetterTokenResponseError,
        BetterTokenServerError,
        BetterTokenSizeMismatchError,
        BetterTokenSpendCapError,
        BetterTokenStorageError,
        BetterTokenTransportError,
        BetterTokenUploadError,
    )
    from airflow_bettertoken.hooks.bettertoken import BetterTokenHook
    from airflow_bettertoken.operators.backfill import catalog_backfill
    from airflow_bettertoken.operators.enrichment import table_enrichment
    from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
    from airflow_bettertoken.operators.list_images import BetterTokenListImagesOperator
    from airflow_bettertoken.operators.list_rows import BetterTokenListRowsOperator
    from airflow_bettertoken.operators.manifest import BetterTokenManifestOperator
    from airflow_bettertoken.operators.next_chunk import BetterTokenNextChunkOperator
    from airflow_bettertoken.operators.results_table import BetterTokenResultsTableOperator
    from airflow_bettertoken.operators.review import BetterTokenReviewOperator
    from airflow_bettertoken.protocol.wire import SIZES

__all__ = [
    "SIZES",
    "BetterTokenAPIError",
    "BetterTokenAuthenticationError",
    "BetterTokenBadRequestError",
    "BetterTokenBudgetError",
    "BetterTokenClaimLostError",
    "BetterTokenConfigError",
    "BetterTokenError",
    "BetterTokenHook",
    "BetterTokenImageEditOperator",
    "BetterTokenInputError",
    "BetterTokenListImagesOperator",
    "BetterTokenListRowsOperator",
    "BetterTokenManifestOperator",
    "BetterTokenNextChunkOperator",
    "BetterTokenNotFoundError",
    "BetterTokenOutputExistsError",
    "BetterTokenPermissionError",
    "BetterTokenRateLimitError",
    "BetterTokenRecordConflictError",
    "BetterTokenRecordError",
    "BetterTokenResponseError",
    "BetterTokenResultsTableOperator",
    "BetterTokenReviewOperator",
    "BetterTokenServerError",
    "BetterTokenSizeMismatchError",
    "BetterTokenSpendCapError",
    "BetterTokenStorageError",
    "BetterTokenTransportError",
    "BetterTokenUploadError",
    "__version__",
    "catalog_backfill",
    "table_enrichment",
]

__version__ = "0.1.0"

# Where each public name is defined (under this package): every error in exceptions.py.
_HOMES: dict[str, str] = {
    **{name: "exceptions" for name in __all__ if name.endswith("Error")},
    "BetterTokenHook": "hooks.bettertoken",
    "BetterTokenImageEditOperator": "operators.image_edit",
    "BetterTokenListImagesOperator": "operators.list_images",
    "BetterTokenListRowsOperator": "operators.list_rows",
    "BetterTokenManifestOperator": "operators.manifest",
    "BetterTokenNextChunkOperator": "operators.next_chunk",
    "BetterTokenResultsTableOperator": "operators.results_table",
    "BetterTokenReviewOperator": "operators.review",
    "SIZES": "protocol.wire",
    "catalog_backfill": "operators.backfill",
    "table_enrichment": "operators.enrichment",
}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562), and keep the name here."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
