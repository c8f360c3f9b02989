"""One case: the conversation, files (download and metadata), reply, status form, export."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from quart import Quart, Response, abort, redirect, request, url_for
from quart.typing import ResponseReturnValue
from wtforms import SelectChoice

from . import filemeta
from .casebook import FileView
from .errors import CryptoError, ExportError, GatewayError, NotCached, Rejected, Unauthorized
from .export import safe_name
from .forms import ActionForm, CaseForm, DisclosureForm, ReplyForm, SpamForm
from .i18n import _, ngettext
from .inbox import PRIORITY_LABELS, STATUS_LABELS
from .pages import bind, checked_form, desk, flash, officer_client, page, unit_names
from .replies import send_reply
from .wire import Case, CaseChanges, Disclosure


def cached_case(case_id: int) -> Case:
    case = desk().cache.case(case_id)
    if case is None:
        abort(404, _("No such case at this desk. Sync first, or it is not one of your units'."))
    return case


def case_form(case: Case, formdata: Any = None) -> Any:
    unit = desk().cache.unit(case.unit)
    officers = unit.officers if unit else []
    form = bind(CaseForm, formdata, data={
        "status": case.status, "priority": case.priority,
        "assignee": str(case.assignee or ""), "labels": ", ".join(case.labels),
    })
    # Choices in the page's language (the form classes are built once, at import).
    form.status.choices = [SelectChoice(s, _(label)) for s, label in STATUS_LABELS.items()]
    form.priority.choices = [SelectChoice(p, _(label)) for p, label in PRIORITY_LABELS.items()]
    form.assignee.choices = [SelectChoice("", _("nobody"))] + [
        SelectChoice(str(o.id), f"{o.name} ({o.handle})") for o in officers]
    return form


async def my_disclosures(case: Case) -> tuple[list[Disclosure], str | None]:
    """This officer's disclosure requests on a case with a sealed identity (from the gateway)."""
    if not case.identity_sealed:
        return [], None
    try:
        return [r for r in await officer_client().disclosures() if r.case == case.id], None
    except Unauthorized:
        raise
    except GatewayError as exc:
        return [], str(exc)


async def _report(document_id: int, limit: int) -> filemeta.MetadataReport | None:
    """None where the file cannot be read here: its own link says why, the page still shows."""
    try:
        return await desk().casebook.file_report(document_id, limit)
    except (CryptoError, NotCached):
        return None


async def case_page(case: Case, *, status: int = 200, reply_form: Any = None, form: Any = None,
                    disclosure_form: Any = None) -> Response:
    conversation = await desk().casebook.conversation(case)
    unit = conversation.unit
    officers = {o.id: o.name for o in unit.officers} if unit else {}
    disclosures, disclosure_problem = await my_disclosures(case)
    # Each synced file's embedded metadata, so that a warning stands next to the file itself.
    limit = desk().settings.max_inspect_bytes
    reports = {f.document.id: await _report(f.document.id, limit)
               for s in conversation.submissions for f in s.files if f.cached}
    return await page("case.html", status=status, c=conversation, case=case, officers=officers,
                      unit_name=unit_names().get(case.unit, case.unit), reports=reports,
                      reply_form=reply_form or bind(ReplyForm), case_form=form or case_form(case),
                      disclosure_form=disclosure_form or bind(DisclosureForm), disclosures=disclosures,
                      disclosure_problem=disclosure_problem, spam_form=bind(SpamForm))


async def file_of(case: Case, document_id: int) -> FileView:
    view = await desk().casebook.file(case, document_id)
    if view is None:
        abort(404, _("No such file in this case."))
    return view


def install(app: Quart) -> None:
    @app.get("/cases/<int:case_id>")
    async def case_view(case_id: int) -> ResponseReturnValue:
        case = cached_case(case_id)
        desk().follower.seen(case.id)  # opened: no longer counted in the page title
        return await case_page(case)

    @app.post("/cases/<int:case_id>/reply")
    async def reply(case_id: int) -> ResponseReturnValue:
        form = await checked_form(ReplyForm)  # the CSRF token first, before any other work
        case = cached_case(case_id)
        if not form.validate():
            return await case_page(case, status=400, reply_form=form)
        try:
            await send_reply(officer_client(), desk().crypto, desk().cache, case, form.text.data)
        except Unauthorized:
            raise
        except (GatewayError, CryptoError) as exc:
            flash(_("The reply was not sent: %(problem)s", problem=exc), "error")
            return await case_page(case, status=502, reply_form=form)
        flash(_("Reply encrypted at this desk and sent."))
        return redirect(url_for("case_view", case_id=case.id), 303)

    @app.post("/cases/<int:case_id>/update")
    async def update(case_id: int) -> ResponseReturnValue:
        await checked_form(ActionForm)  # the CSRF token first, before any other work
        case = cached_case(case_id)
        form = case_form(case, await request.form)  # the assignee choices depend on the unit
        if not form.validate():
            return await case_page(case, status=400, form=form)
        labels = [lbl.strip() for lbl in (form.labels.data or "").split(",") if lbl.strip()]
        changes = CaseChanges(status=form.status.data, priority=form.priority.data, labels=labels,
                              assignee=int(form.assignee.data) if form.assignee.data else None,
                              unassign=not form.assignee.data)
        try:
            updated = await officer_client().update_case(case.id, changes)
        except Rejected as exc:
            flash(_("Not changed: %(problem)s", problem=exc), "error")
            return redirect(url_for("case_view", case_id=case.id), 303)
        await desk().cache.store_case(updated)
        flash(_("Case updated."))
        return redirect(url_for("case_view", case_id=case.id), 303)

    @app.post("/cases/<int:case_id>/export")
    async def export(case_id: int) -> ResponseReturnValue:
        await checked_form(ActionForm)
        case = cached_case(case_id)
        try:
            result = await desk().exporter.export(officer_client(), case.id)
        except Unauthorized:
            raise
        except (ExportError, GatewayError) as exc:
            flash(_("Not exported: %(problem)s", problem=exc), "error")
            return redirect(url_for("case_view", case_id=case.id), 303)
        flash(ngettext("Exported %(num)d file to %(folder)s (MANIFEST.sha256 lists its SHA-256); "
                       "the export is recorded in the audit log.",
                       "Exported %(num)d files to %(folder)s (MANIFEST.sha256 lists their SHA-256); "
                       "the export is recorded in the audit log.", result.files, folder=result.folder))
        return redirect(url_for("case_view", case_id=case.id), 303)

    @app.get("/cases/<int:case_id>/files/<int:document_id>")
    async def download(case_id: int, document_id: int) -> ResponseReturnValue:
        """The decrypted file, streamed from gpg to the browser; never written to disk here."""
        view = await file_of(cached_case(case_id), document_id)
        path = desk().cache.require_document(view.document.id)
        name = safe_name(view.entry.name if view.entry else "", f"file-{document_id}")
        ascii_name = name.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
        body: AsyncIterator[bytes] = desk().crypto.stream_decrypt(path)
        response = Response(body, content_type="application/octet-stream")
        response.headers["Content-Disposition"] = (
            f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}")
        response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
        response.timeout = None
        return response

    @app.get("/cases/<int:case_id>/files/<int:document_id>/metadata")
    async def metadata(case_id: int, document_id: int) -> ResponseReturnValue:
        case = cached_case(case_id)
        view = await file_of(case, document_id)
        desk().cache.require_document(view.document.id)  # not synced: NotCached, "press Sync"
        report = await desk().casebook.file_report(view.document.id, desk().settings.max_inspect_bytes)
        return await page("file_meta.html", case=case, file=view, report=report)

    @app.errorhandler(NotCached)
    async def not_cached(exc: NotCached) -> ResponseReturnValue:
        flash(_("%(problem)s: press Sync.", problem=exc), "error")
        return redirect(url_for("inbox"), 303)
