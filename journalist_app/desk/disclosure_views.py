"""Sealed identities and spam at the desk: request a disclosure with a reason, a custodian's
pending requests and decisions, the disclosed details, marking a case as spam."""

from __future__ import annotations

from quart import Quart, redirect, session, url_for
from quart.typing import ResponseReturnValue

from .case_views import cached_case, case_page
from .disclosures import approve_and_disclose, read_disclosure
from .errors import CryptoError, GatewayError, NotFound, Rejected, Unauthorized
from .forms import ActionForm, DisclosureForm, SpamForm
from .i18n import _
from .pages import checked_form, desk, error_page, flash, officer_client, page, unit_names
from .wire import CaseChanges


def install(app: Quart) -> None:
    @app.post("/cases/<int:case_id>/spam")
    async def mark_spam(case_id: int) -> ResponseReturnValue:
        form = await checked_form(SpamForm)
        case = cached_case(case_id)
        if not form.validate():
            return await error_page(400, _("Choose spam or not spam."))
        spam = form.spam.data == "1"
        try:
            updated = await officer_client().update_case(case.id, CaseChanges(spam=spam))
        except Rejected as exc:
            flash(_("Not changed: %(problem)s", problem=exc), "error")
            return redirect(url_for("case_view", case_id=case.id), 303)
        await desk().cache.store_case(updated)
        flash(_("Marked as spam: hidden from the inbox (see the spam view); further messages raise no alert.")
              if spam else _("No longer spam: back in the inbox."))
        return redirect(url_for("case_view", case_id=case.id), 303)

    @app.post("/cases/<int:case_id>/disclosure-requests")
    async def request_disclosure(case_id: int) -> ResponseReturnValue:
        form = await checked_form(DisclosureForm)
        case = cached_case(case_id)
        if not form.validate():
            return await case_page(case, status=400, disclosure_form=form)
        try:
            await officer_client().request_disclosure(case.id, form.reason.data)
        except Unauthorized:
            raise
        except (Rejected, NotFound) as exc:
            flash(_("Not requested: %(problem)s", problem=exc), "error")
            return redirect(url_for("case_view", case_id=case.id), 303)
        flash(_("Disclosure requested; a custodian will decide."))
        return redirect(url_for("case_view", case_id=case.id), 303)

    @app.get("/disclosures")
    async def disclosures() -> ResponseReturnValue:
        requests = await officer_client().disclosures()
        return await page("disclosures.html", requests=list(reversed(requests)),
                          custodian=bool(session.get("custodian")), unit_names=unit_names())

    async def decide(request_id: int, approve: bool) -> ResponseReturnValue:
        await checked_form(ActionForm)
        try:
            if approve:
                found = next((r for r in await officer_client().disclosures() if r.id == request_id), None)
                if found is None:
                    return await error_page(404, _("No such disclosure request."))
                await approve_and_disclose(officer_client(), desk().crypto, found)
            else:
                await officer_client().decide_disclosure(request_id, approve=False)
        except Unauthorized:
            raise
        except (GatewayError, CryptoError) as exc:
            flash(_("Not done: %(problem)s", problem=exc), "error")
            return redirect(url_for("disclosures"), 303)
        flash(_("Approved: the details were re-encrypted at this desk to the requesting officer's key "
                "and sent.") if approve else _("Refused."))
        return redirect(url_for("disclosures"), 303)

    @app.post("/disclosures/<int:request_id>/approve")
    async def approve(request_id: int) -> ResponseReturnValue:
        return await decide(request_id, True)

    @app.post("/disclosures/<int:request_id>/refuse")
    async def refuse(request_id: int) -> ResponseReturnValue:
        return await decide(request_id, False)

    @app.get("/disclosures/<int:request_id>")
    async def disclosure(request_id: int) -> ResponseReturnValue:
        """The disclosed details, decrypted in memory for this page only (audited each time)."""
        client = officer_client()
        found = next((r for r in await client.disclosures() if r.id == request_id), None)
        if found is None:
            return await error_page(404, _("No such disclosure request of yours."))
        try:
            contact = await read_disclosure(client, desk().crypto, request_id)
        except (Rejected, NotFound) as exc:
            return await error_page(409, _("Nothing to show: %(problem)s", problem=exc))
        return await page("disclosure.html", request=found, contact=contact)
