"""The gallery page as HTML: one row per edit, its sources beside its output. No script, no CDN.

The same renderer serves the live gallery and the static page that ``make demo`` writes; only the
URLs of the images and of the pages differ, so they come in as functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape
from typing import TYPE_CHECKING
from urllib.parse import urlencode

if TYPE_CHECKING:
    from airflow_bettertoken.plugins._rows import EditRow
    from airflow_bettertoken.protocol.review import ReviewItem

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 16px; color: #1d2433; background: #fff; }
h1 { font-size: 18px; margin: 0 0 4px; } .meta { color: #5b6478; margin: 0 0 12px; }
nav.pages { margin: 12px 0; } nav.pages a, nav.pages span { margin-right: 10px; }
article.edit { border: 1px solid #dde2ec; border-radius: 8px; padding: 12px; margin: 0 0 12px; }
article.edit header { display: flex; gap: 10px; align-items: baseline; margin-bottom: 8px; }
article.edit h2 { font-size: 15px; margin: 0; word-break: break-all; }
.status { border-radius: 10px; padding: 1px 8px; font-size: 12px; font-weight: 600; }
.status-done { background: #dcf5e3; color: #136b2e; } .status-skipped { background: #e8ecf3; color: #3d4a63; }
.status-failed { background: #fde2e1; color: #a11d16; } .status-other { background: #fff3cd; color: #7a5b00; }
.status-not-run { background: #fff; color: #3d4a63; border: 1px dashed #8a93a6; }
section.legend { border-top: 1px solid #dde2ec; margin-top: 16px; padding-top: 8px; color: #3d4a63; }
section.legend h2 { font-size: 14px; margin: 0 0 6px; } section.legend dl { flex: none; gap: 4px 12px; }
.body { display: flex; gap: 24px; align-items: flex-start; flex-wrap: wrap; }
.images { display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
figure { margin: 0; } figure .thumbs { display: flex; gap: 6px; flex-wrap: wrap; }
figure img { max-width: 200px; max-height: 200px; border: 1px solid #dde2ec; border-radius: 4px; }
figcaption { color: #5b6478; font-size: 12px; margin-top: 4px; } .arrow { font-size: 24px; color: #8a93a6; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0; flex: 1 1 320px; }
dt { color: #5b6478; } dd { margin: 0; word-break: break-all; }
.badge-mismatch { background: #ffe7c2; color: #8a4b00; border-radius: 4px; padding: 0 6px; font-weight: 600; }
.reason { color: #a11d16; } .empty { color: #5b6478; }
.review { border-top: 1px solid #dde2ec; margin-top: 10px; padding-top: 8px; }
.review fieldset { border: 0; padding: 0; margin: 6px 0 0; display: flex; gap: 14px; flex-wrap: wrap; }
.review textarea { width: 420px; height: 3.2em; font: inherit; } .review ol { margin: 4px 0; color: #5b6478; }
.state { border-radius: 10px; padding: 1px 8px; font-size: 12px; font-weight: 600; background: #e8ecf3; }
.state-published, .state-approved { background: #dcf5e3; color: #136b2e; }
.state-rejected { background: #fde2e1; color: #a11d16; }
.state-pending { background: #fff3cd; color: #7a5b00; }
.submit { position: sticky; bottom: 0; background: #fff; padding: 10px 0; border-top: 1px solid #dde2ec; }
.submit button { font: inherit; font-weight: 600; padding: 6px 16px; }
.notice { background: #dcf5e3; padding: 6px 10px; border-radius: 6px; }
"""


ImageUrl = Callable[["EditRow", str, str], str]  # (row, "output" or "source-N", "thumb" or "full") -> URL


def _thumb(row: EditRow, which: str, alt: str, image_url: ImageUrl) -> str:
    return (
        f'<a href="{escape(image_url(row, which, "full"))}" target="_blank" rel="noopener">'
        f'<img src="{escape(image_url(row, which, "thumb"))}" alt="{escape(alt)}" loading="lazy"></a>'
    )


#: The URL of a task of the run in Airflow's UI (its log), or None where there is no Airflow UI.
TaskUrl = Callable[[str], str]


def _details(row: EditRow, task_url: TaskUrl | None = None) -> str:
    result, items = row.result, []
    if row.prompt:
        items.append(("prompt", f'<span class="prompt">{escape(row.prompt)}</span>'))
    if result:
        requested = result.requested_size or "?"
        badge = (
            f' <span class="badge-mismatch" title="asked for {escape(requested)}">size differs</span>'
            if result.size_matches is False
            else ""
        )
        usage = ", ".join(f"{k} {v}" for k, v in (result.usage or {}).items()) or "none"
        items += [
            ("real size", f"{result.width}x{result.height}{badge}"),
            ("requested", escape(requested)),
            ("calls, seconds", f"{result.calls}, {result.elapsed_s:.1f} s"),
            ("usage", escape(usage)),
            ("output", escape(result.output_uri)),
            ("sha256", escape((result.sha256 or "")[:12])),
        ]
    if row.not_run is not None:
        why = escape(row.not_run.text)
        if row.not_run.upstream_task and task_url is not None:
            link = escape(task_url(row.not_run.upstream_task))
            why += f' (<a href="{link}">{escape(row.not_run.upstream_task)}: its log</a>)'
        items.append(("why", why))
    if row.failure:
        reason = f"{row.failure.error}: {row.failure.reason}"
        items.append(("failure", f'<span class="reason">{escape(reason)}</span>'))
    shown = row.shown
    if shown.reason:
        items.append(("record", f'<span class="reason">not verified: {escape(shown.reason)}</span>'))
        if row.reported.unreadable_text:
            items.append((f"{escape(row.reported.unreadable)} (XCom)", escape(row.reported.unreadable_text)))
        named = result.source_uris if result else row.failure.source if row.failure else []
        items += [
            ("source (XCom)", escape(str(uri))) for uri in (named if isinstance(named, list) else [named])
        ]
    elif shown.checked_against and (result or row.failure):
        # The XCom agreed on which objects; its figures are the task's own word.
        note = f"checked against {shown.checked_against}; sizes, calls and usage as the task reported them"
        items.append(("record", escape(note)))
    return "<dl>" + "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in items) + "</dl>"


def _row(
    row: EditRow, image_url: ImageUrl, anchors: bool, extra: str = "", task_url: TaskUrl | None = None
) -> str:
    status = row.status if row.status in ("done", "skipped", "failed") else "other"
    status = "not-run" if row.status == "not run" else status
    label = row.label or row.task_id
    # A mapped edit's map index; an unmapped one (-1) is its task alone.
    task_name = f"{row.task_id}[{row.map_index}]" if row.map_index >= 0 else row.task_id
    count = len(row.shown.sources)
    if row.shown.reason:  # an unverified record: its XCom as text in the details, no image at all
        sources = output = '<span class="empty">not shown</span>'
    elif row.shown.output:
        sources = "".join(
            _thumb(row, f"source-{index}", f"source {index + 1} of {label}", image_url)
            for index in range(count)
        )
        output = _thumb(row, "output", f"output of {label}", image_url)
    else:  # a failed edit's source may be what failed (not an image at all): linked, not drawn
        links = [
            (image_url(row, f"source-{index}", "full"), location.key.rsplit("/", 1)[-1])
            for index, location in enumerate(row.shown.sources)
        ]
        sources = "<br>".join(f'<a href="{escape(url)}">{escape(name)}</a>' for url, name in links)
        output = '<span class="empty">no image</span>'
    ids = (' id="sources"', ' id="output"') if anchors else ("", "")
    images = (
        f'<div class="images"><figure{ids[0]}><div class="thumbs">{sources}</div>'
        f"<figcaption>source{'s' if count != 1 else ''}</figcaption></figure>"
        f'<span class="arrow" aria-hidden="true">&rarr;</span>'
        f'<figure{ids[1]}><div class="thumbs">{output}</div><figcaption>output</figcaption></figure></div>'
    )
    if row.not_run is not None and not count:  # nothing read, nothing written: no empty frames
        images = ""
    return (
        f'<article class="edit"><header><h2>{escape(label)}</h2>'
        f'<span class="status status-{status}">{escape(row.status)}</span>'
        f'<span class="meta">{escape(task_name)}</span></header>'
        f'<div class="body">{images}{_details(row, task_url)}</div>{extra}</article>'
    )


def page_nav(page: int, pages: int, page_url: Callable[[int], str]) -> str:
    """Previous, "page N of M" and next links; nothing when there is one page."""
    if pages <= 1:
        return ""
    links = [f'<a href="{escape(page_url(page - 1))}">previous</a>'] if page > 1 else []
    links.append(f"<span>page {page} of {pages}</span>")
    if page < pages:
        links.append(f'<a href="{escape(page_url(page + 1))}">next</a>')
    return f'<nav class="pages">{"".join(links)}</nav>'


#: Every badge and mark a row can show, and what it means: the page's legend.
LEGEND = (
    ('<span class="status status-done">done</span>', "the edit wrote its output (the images shown)"),
    ('<span class="status status-skipped">skipped</span>', "the output was there already: nothing was paid"),
    ('<span class="status status-failed">failed</span>', "the edit failed: its record says why"),
    (
        '<span class="status status-not-run">not run</span>',
        "Airflow did not run the edit: the row names the task it waited on, with a link to that task's log",
    ),
    (
        '<span class="status status-other">running</span>',
        "any other badge is Airflow's own state of a task not finished (queued, deferred, up for retry...)",
    ),
    (
        '<span class="badge-mismatch">size differs</span>',
        "the service answered with another size than the one asked for (hover: the size asked)",
    ),
    (
        '<span class="reason">not verified</span>',
        "the task's record (its XCom) does not agree with what only the worker writes: it is shown as "
        "text, with no image",
    ),
    ("sources &rarr; output", "thumbnails of what the edit read and wrote; click one for full size"),
    (
        "orange frame",
        "inside an output, drawn by the local emulator (make demo, the tests): the service draws none",
    ),
)


def legend() -> str:
    items = "".join(f"<dt>{mark}</dt><dd>{escape(text)}</dd>" for mark, text in LEGEND)
    return f'<section class="legend"><h2>Legend</h2><dl>{items}</dl></section>'


#: The page of a run with no edit row, by whether its DAG has edit tasks at all.
NO_EDITS = {
    True: "This run has no image edits: its edit tasks had nothing to edit.",
    False: (
        "This run has no image edits: its DAG has no BetterToken edit task. Airflow shows a plugin's "
        "tabs on every DAG; an admin can hide this one with [bettertoken] gallery_tab = False."
    ),
}


def render_page(
    *,
    dag_id: str,
    run_id: str,
    rows: Sequence[EditRow],
    total: int,
    page: int,
    pages: int,
    image_url: ImageUrl,
    page_url: Callable[[int], str],
    css_url: str,
    catalog_url: str | None = None,
    task_url: TaskUrl | None = None,
    has_edit_tasks: bool = True,
) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no edits"
    nav = page_nav(page, pages, page_url)
    catalog = f' &middot; <a href="{escape(catalog_url)}">catalog progress</a>' if catalog_url else ""
    body = "".join(_row(row, image_url, anchors=len(rows) == 1, task_url=task_url) for row in rows)
    if total:
        body = (body or '<p class="empty">No edit on this page.</p>') + legend()
        counted = f" &middot; {total} edit task{'s' if total != 1 else ''}; this page: {escape(summary)}"
    else:  # a neutral page: the tab shows on every DAG, edits or not
        body, counted, nav = f"<p>{escape(NO_EDITS[has_edit_tasks])}</p>", "", ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Edited images: {escape(dag_id)} {escape(run_id)}</title>"
        f'<link rel="stylesheet" href="{escape(css_url)}"></head><body>'
        f'<h1>Edited images</h1><p class="meta">{escape(dag_id)} &middot; {escape(run_id)}'
        f"{counted}{catalog}</p>"
        f"{nav}{body}{nav}</body></html>"
    )


#: The review state of a row's output (from the run's review record), for :func:`render_review_page`.
ReviewOf = Callable[["EditRow"], "ReviewItem | None"]


def _history(item: ReviewItem) -> str:
    entries = []
    for decision in item.history:
        text = f"round {decision.round}: {decision.action.value} by {decision.by} at {decision.at}"
        if decision.prompt:
            text += f", prompt: {decision.prompt}"
        if decision.size:
            text += f", size {decision.size}"
        entries.append(f"<li>{escape(text)}</li>")
    return f"<ol>{''.join(entries)}</ol>" if entries else ""


def _review_block(row: EditRow, item: ReviewItem | None, sizes: Sequence[str], last_round: int) -> str:
    if item is None:
        return '<div class="review"><span class="empty">not in review</span></div>'
    where = f" &rarr; {escape(item.published_uri)}" if item.published_uri else ""
    head = (
        f'<div class="review">review: <span class="state state-{item.state.value}">'
        f"{escape(item.state.value)}</span> (round {item.round}){where}"
    )
    if item.prompt and item.reedit_of:
        head += f"<br>re-edit of {escape(item.reedit_of)} with the prompt: {escape(item.prompt)}"
    controls = ""
    if item.state.value == "pending":
        ref = f"{row.task_id}.{row.map_index}"
        name = escape(f"decision.{ref}")
        choices = [("", "undecided"), ("approve", "Approve"), ("reject", "Reject")]
        if item.round < last_round:
            choices.append(("reedit", "Re-edit"))
        radios = "".join(
            f'<label><input type="radio" name="{name}" value="{value}"{" checked" if not value else ""}> '
            f"{label}</label>"
            for value, label in choices
        )
        reedit = ""
        if item.round < last_round:
            options = "".join(f'<option value="{escape(size)}">{escape(size)}</option>' for size in sizes)
            reedit = (
                f'<label>revised prompt <textarea name="{escape("prompt." + ref)}"></textarea></label>'
                f'<label>size <select name="{escape("size." + ref)}"><option value="">as before</option>'
                f"{options}</select></label>"
            )
        controls = f"<fieldset>{radios}{reedit}</fieldset>"
    return f"{head}{controls}{_history(item)}</div>"


def render_review_page(
    *,
    dag_id: str,
    run_id: str,
    rows: Sequence[EditRow],
    review_of: ReviewOf,
    csrf_token: str,
    sizes: Sequence[str],
    last_round: int,
    notice: str,
    image_url: ImageUrl,
    css_url: str,
) -> str:
    """The review page: every row with its review state and history, and one form for all of them."""
    blocks = [(row, review_of(row)) for row in rows]
    # What waits for a decision comes first; the rest keeps its order (task, map index).
    blocks.sort(key=lambda block: block[1] is None or block[1].state.value != "pending")
    pending = sum(1 for _, item in blocks if item is not None and item.state.value == "pending")
    body = "".join(
        _row(row, image_url, anchors=False, extra=_review_block(row, item, sizes, last_round))
        for row, item in blocks
    )
    body = body or '<p class="empty">This run has no edit tasks.</p>'
    submit = (
        f'<div class="submit"><button type="submit">Submit {pending} decisions</button> '
        "Undecided rows are left as they are.</div>"
        if pending
        else '<p class="empty">No image of this run waits for review.</p>'
    )
    banner = f'<p class="notice">{escape(notice)}</p>' if notice else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Review: {escape(dag_id)} {escape(run_id)}</title>"
        f'<link rel="stylesheet" href="{escape(css_url)}"></head><body>'
        f'<h1>Review the edited images</h1><p class="meta">{escape(dag_id)} &middot; {escape(run_id)} '
        f"&middot; {pending} waiting for review</p>{banner}"
        # The token is in the URL, so that the route checks it before it reads the body.
        f'<form method="post" action="review?{escape(urlencode({"csrf_token": csrf_token}))}">'
        f"{body}{submit}</form>"
        "</body></html>"
    )
