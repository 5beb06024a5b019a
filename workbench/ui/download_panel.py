"""The Model tab's "Get models" panel: find a repo, see each form with whether it fits, download, follow.

Layout and wiring only: every action is a DownloadService call; its WorkbenchError becomes a
gr.Error. A repo's listing is kept per browser session in a gr.State; the progress bar and the
downloads table are redrawn by a gr.Timer while the rest of the UI stays usable.
"""

from __future__ import annotations

import functools
import html

import gradio as gr

from ..downloads.forms import split_spec
from ..downloads.service import DownloadService
from ..downloads.types import DONE, FAILED, RUNNING, Progress, RepoListing
from ..errors import WorkbenchError
from ..services.model_service import ModelService

FORM_HEADERS = ["form", "kind", "size", "quantization", "fit", "memory plan", "becomes models/..."]
JOB_HEADERS = ["id", "model", "form", "state", "done", "speed", "ETA", "message"]
MiB, GiB = 2**20, 2**30


def _size(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def _errors_shown(handler):
    @functools.wraps(handler)
    def call(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except WorkbenchError as e:
            raise gr.Error(str(e)) from None
    return call


def form_rows(listing: RepoListing | None, existing: set[str]) -> list[list]:
    if listing is None:
        return []
    rows = []
    for p in listing.plans:
        star = " (recommended)" if p.form.label == listing.recommended else ""
        there = " (already there)" if p.form.default_name in existing else ""
        rows.append([p.form.label + star, p.form.kind, _size(p.form.size), p.quantization or "", p.fit_text,
                     p.verdict, p.form.default_name + there])
    return rows


def listing_summary(listing: RepoListing) -> str:
    planned = sum(p.form.size for p in listing.plans if p.header_bytes)
    text = (f"**{listing.repo_id}** (commit `{listing.commit[:10]}`): {len(listing.plans)} form(s), fit for "
            f"**{listing.target}**, planned from {_size(listing.bytes_fetched)} of headers "
            f"(not the {_size(planned)} of weights).")
    if listing.recommended:
        text += f" Recommended: **{listing.recommended}**, the largest that fits."
    elif any(p.fits is False for p in listing.plans):
        text += " Nothing fits at this context: try a smaller one, or 0 for the largest that fits."
    else:
        text += " No form here could be planned (see the fit column); you can still download one."
    return text


def progress_html(p: Progress | None) -> str:
    """A bar with bytes, speed and ETA; data attributes let tests read it."""
    if p is None:
        return "<div id='dl-bar-idle'>No download yet.</div>"
    pct = round(p.fraction * 100, 1)
    color = {DONE: "#2e7d32", FAILED: "#c62828"}.get(p.state, "#1565c0")
    speed = f", {p.speed_bps / MiB:.1f} MiB/s" if p.speed_bps else ""
    eta = f", about {p.eta_s:.0f} s left" if p.eta_s is not None else ""
    resumed = f", resumed from {_size(p.resumed_bytes)}" if p.resumed_bytes and p.state == RUNNING else ""
    line = f"{p.name}: {p.state}, {_size(p.done_bytes)} of {_size(p.total_bytes)} ({pct}%){speed}{eta}{resumed}"
    return (f"<div class='dl-progress' data-state='{p.state}' data-percent='{pct}'>"
            f"<div style='background:#e0e0e0;border-radius:4px;height:14px;width:100%'>"
            f"<div class='dl-fill' style='background:{color};height:14px;border-radius:4px;width:{pct}%'></div></div>"
            f"<div class='dl-text'>{html.escape(line)}</div>"
            f"<div class='dl-message'>{html.escape(p.message)}</div></div>")


def job_rows(jobs: list[Progress]) -> list[list]:
    return [[p.job_id, p.name, p.label, p.state, f"{_size(p.done_bytes)} of {_size(p.total_bytes)}",
             f"{p.speed_bps / MiB:.1f} MiB/s" if p.speed_bps else "", f"{p.eta_s:.0f} s" if p.eta_s else "",
             p.message] for p in jobs]


def build_download_panel(downloads: DownloadService, models: ModelService, page: gr.Blocks) -> None:
    """The panel; its lists fill on `page` load (the page shell holds no names from disk)."""
    with gr.Accordion("Get models (Hugging Face Hub, or the mirror in HF_ENDPOINT)", open=False,
                      elem_id="download-panel"):
        with gr.Row():
            repo = gr.Textbox(label="Repo", placeholder="org/name, or org/name:Q4_K_M", scale=4, elem_id="dl-repo")
            profile = gr.Dropdown([], value=None, allow_custom_value=True, label="Fit for (empty: this machine)",
                                  scale=2, elem_id="dl-profile")
            n_ctx = gr.Number(4096, precision=0, label="At context", info="0 = the largest that fits", scale=1)
            find = gr.Button("Find", scale=1, elem_id="dl-find")
        summary = gr.Markdown("", elem_id="dl-summary")
        forms = gr.Dataframe([], headers=FORM_HEADERS, interactive=False, label="Forms (planned from headers only)",
                             elem_id="dl-forms")
        with gr.Row():
            form = gr.Dropdown([], value=None, allow_custom_value=True, label="Form", scale=2, elem_id="dl-form")
            name = gr.Textbox(label="Name in models/", placeholder="empty: the default shown above", scale=2)
            start = gr.Button("Download", variant="primary", scale=1, elem_id="dl-start")
        bar = gr.HTML(progress_html(None), elem_id="dl-progress")
        jobs = gr.Dataframe([], headers=JOB_HEADERS, interactive=False, label="Downloads", elem_id="dl-jobs")
        with gr.Row():
            job = gr.Dropdown([], value=None, allow_custom_value=True, label="Download", scale=2)
            cancel = gr.Button("Cancel", scale=1, elem_id="dl-cancel")
            kept = gr.Dropdown([], value=None, allow_custom_value=True, label="Unfinished (bytes kept in models/)",
                               scale=2, elem_id="dl-unfinished")
            resume = gr.Button("Resume", scale=1, elem_id="dl-resume")
            discard = gr.Button("Discard", scale=1)
        listing = gr.State(None)
        timer = gr.Timer(1)
        refresh = gr.Button("Refresh downloads", visible=False)  # the timer's redraw as an API endpoint

    @_errors_shown
    def on_find(spec, profile_name, ctx):
        found = downloads.find(spec, profile_name or None, int(ctx or 0))
        labels = [p.form.label for p in found.plans]
        chosen = found.recommended or (labels[0] if labels else None)
        return (found, listing_summary(found), form_rows(found, set(models.model_names())),
                gr.update(choices=labels, value=chosen))

    @_errors_shown
    def on_start(found, spec, profile_name, ctx, label, new_name):
        if found is None or found.repo_id != split_spec(spec or "")[0].strip().strip("/"):
            found = downloads.find(spec, profile_name or None, int(ctx or 0))  # typed, not found yet (or the API)
        if not label:
            raise gr.Error("Pick one of the repo's forms first.")
        job_id = downloads.enqueue(found, label, (new_name or "").strip() or None)
        return tick(job_id)

    def tick(selected=None):
        all_jobs = downloads.jobs()
        shown = next((p for p in all_jobs if p.job_id == selected), None) or \
            next((p for p in all_jobs if p.state == RUNNING), None) or (all_jobs[0] if all_jobs else None)
        ids = [p.job_id for p in all_jobs]
        names = [r["name"] for r in downloads.unfinished()]
        return (progress_html(shown), job_rows(all_jobs), gr.update(choices=ids, value=shown.job_id if shown else None),
                gr.update(choices=names))

    @_errors_shown
    def on_cancel(job_id):
        downloads.cancel(job_id or "")
        return tick(job_id)

    @_errors_shown
    def on_resume(kept_name):
        return tick(downloads.resume(kept_name or ""))

    @_errors_shown
    def on_discard(kept_name):
        downloads.discard(kept_name or "")
        return tick()

    outputs = [bar, jobs, job, kept]
    find.click(on_find, [repo, profile, n_ctx], [listing, summary, forms, form], api_name="find_repo")
    repo.submit(on_find, [repo, profile, n_ctx], [listing, summary, forms, form], api_visibility="private")
    start.click(on_start, [listing, repo, profile, n_ctx, form, name], outputs, api_name="start_download")
    cancel.click(on_cancel, job, outputs, api_name="cancel_download")
    resume.click(on_resume, kept, outputs, api_name="resume_download")
    discard.click(on_discard, kept, outputs, api_name="discard_download")
    timer.tick(lambda j: tick(j), job, outputs, show_progress="hidden", api_visibility="private")
    refresh.click(lambda j: tick(j), job, outputs, api_name="download_progress")

    def on_page_load():
        names = downloads.profiles.names() if downloads.profiles is not None else []
        return (gr.update(choices=names), *tick())

    page.load(on_page_load, None, [profile, *outputs], api_visibility="private")
