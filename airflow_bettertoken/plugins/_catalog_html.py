"""The catalog page as HTML: where a chain of backfill runs stands, from its own record. No script.

Progress is a ``<progress>`` element: the page's policy allows no inline style to draw a bar with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from html import escape

from airflow_bettertoken.plugins._catalog import Catalog
from airflow_bettertoken.plugins._html import page_nav
from airflow_bettertoken.protocol.result import EditFailure
from airflow_bettertoken.storage.chain import ChainState, duration

#: Failures shown on one page of the catalog.
FAILURES_PER_PAGE = 50
BUDGET_ERROR = "BetterTokenBudgetError"
NO_CATALOG = (
    "This run has no catalog backfill or table enrichment: its DAG has no BetterToken listing or row "
    "planner task. Airflow shows a plugin's "
    "tabs on every DAG; an admin can hide this one with [bettertoken] catalog_tab = False."
)

CATALOG_CSS = """
progress.catalog { width: 100%; max-width: 640px; height: 18px; display: block; margin: 4px 0 2px; }
div.figures { display: flex; gap: 40px; flex-wrap: wrap; }
section.catalog { margin: 0 0 18px; } section.catalog h2 { font-size: 15px; margin: 0 0 6px; }
table.catalog { border-collapse: collapse; } table.catalog td, table.catalog th
{ border-bottom: 1px solid #dde2ec; padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
table.catalog td.n { text-align: right; font-variant-numeric: tabular-nums; }
"""


def _n(value: int | float) -> str:
    return f"{value:,}"


def _items(pairs: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _section(title: str, body: str) -> str:
    return f'<section class="catalog"><h2>{escape(title)}</h2>{body}</section>'


def _progress(state: ChainState) -> str:
    share = f" ({state.done / state.images:.1%})" if state.images else ""
    return (
        f'<progress class="catalog" max="{max(state.images, 1)}" value="{state.done}">'
        f"{state.done} of {state.images}</progress>"
        f'<p class="meta">{_n(state.done)} of {_n(state.images)} images done{share}</p>'
    )


def _counts(state: ChainState) -> str:
    budget = sum(1 for failure in state.failed_for_good.values() if failure.error == BUDGET_ERROR)
    return _items(
        [
            ("done", _n(state.done)),
            ("remaining", _n(state.pending)),
            ("of which to try again", _n(len(state.failed_may_retry))),
            ("failed for good", _n(len(state.failed_for_good) - budget)),
            ("blocked by the spend budget", _n(budget)),
        ]
    )


def _spend(state: ChainState) -> str:
    spend = state.spend
    return _items(
        [
            ("POSTs", _n(spend.posts)),
            ("paid", _n(spend.paid)),
            ("maybe billed", _n(spend.maybe_billed)),
            ("billed without an image", _n(spend.billed_without_image)),
        ]
    )


def _pace(state: ChainState) -> str:
    rate, eta = state.images_per_hour(), state.eta_seconds()
    if rate is None or eta is None:
        return '<p class="empty">No run of the chain has finished an edit yet to give a pace.</p>'
    left = "done" if state.pending == 0 else f"about {duration(eta)} left"
    return _items([("images an hour", _n(round(rate))), ("remaining time", escape(left))])


def _runs(state: ChainState, run_url: Callable[[str], str]) -> str:
    if not state.runs:
        return '<p class="empty">No run of the chain has finished yet.</p>'
    head = "<tr><th>run</th><th>planned</th><th>done</th><th>failed</th><th>seconds</th><th>POSTs</th></tr>"
    rows = "".join(
        f'<tr><td><a href="{escape(run_url(run.run_id))}">{escape(run.run_id)}</a></td>'
        f'<td class="n">{_n(run.planned)}</td><td class="n">{_n(run.done)}</td>'
        f'<td class="n">{_n(run.failed)}</td>'
        f'<td class="n">{"" if run.seconds is None else f"{run.seconds:,.0f}"}</td>'
        f'<td class="n">{_n(run.spend.posts)}</td></tr>'
        for run in state.runs
    )
    return f'<table class="catalog">{head}{rows}</table>'


def _failures(
    state: ChainState, page: int, page_url: Callable[[int], str], run_url: Callable[[str], str]
) -> str:
    if not state.failed_for_good:
        return '<p class="empty">No edit of the chain failed for good.</p>'
    keys = sorted(state.failed_for_good)
    pages = max(1, math.ceil(len(keys) / FAILURES_PER_PAGE))
    page = min(page, pages)
    shown = keys[(page - 1) * FAILURES_PER_PAGE : page * FAILURES_PER_PAGE]

    def row(key: str, failure: EditFailure) -> str:
        return (
            f"<tr><td>{escape(key)}</td><td>{escape(failure.error or '')}</td>"
            f'<td class="reason">{escape(failure.reason)}</td>'
            f'<td><a href="{escape(run_url(failure.run_id))}">{escape(failure.run_id)}</a></td></tr>'
        )

    head = "<tr><th>source</th><th>error</th><th>reason</th><th>run</th></tr>"
    table = f'<table class="catalog">{head}{"".join(row(k, state.failed_for_good[k]) for k in shown)}</table>'
    return table + page_nav(page, pages, page_url)


def render_catalog(
    *,
    dag_id: str,
    run_id: str,
    catalog: Catalog,
    page: int,
    run_url: Callable[[str], str],
    page_url: Callable[[int], str],
    css_url: str,
    has_listing: bool = True,
) -> str:
    state = catalog.state
    title = f"Catalog: {escape(dag_id)} {escape(run_id)}"
    record = f"record: {escape(catalog.location.uri)}" if catalog.location else "no record"
    if not has_listing:  # a neutral page: the tab shows on every DAG, catalogs or not
        body = f"<p>{escape(NO_CATALOG)}</p>"
        meta = f"{escape(dag_id)} &middot; {escape(run_id)}"
    elif state is None:
        body = f'<p class="reason">No catalog to show: {escape(catalog.reason or "")}.</p>'
        meta = f"{escape(dag_id)} &middot; {escape(run_id)} &middot; {record}"
    else:
        meta = (
            f"{escape(state.source_uri)} &rarr; {escape(state.dest_uri)} &middot; the chain of "
            f"{escape(state.root_run_id)} &middot; {record}"
        )
        body = "".join(
            [
                _progress(state),
                '<div class="figures">',
                _section("Images", _counts(state)),
                _section("Spend so far", _spend(state)),
                _section("Pace over the recent runs", _pace(state)),
                "</div>",
                _section("Runs", _runs(state, run_url)),
                _section("Failed for good", _failures(state, page, page_url, run_url)),
            ]
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title>"
        f'<link rel="stylesheet" href="{escape(css_url)}"></head><body>'
        f'<h1>Catalog progress</h1><p class="meta">{meta}</p>{body}</body></html>'
    )
