"""All source-facing routes. Request globals live here and in web.py only."""

from __future__ import annotations

import datetime as dt
from typing import Any

from quart import (
    Quart,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from quart.typing import ResponseReturnValue
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException
from wtforms import SelectChoice

from cpcp.cases import CaseView, EventView, UnitView
from cpcp.codenames import (
    Codename,
    generate_codename,
    generate_digit_codename,
    to_devanagari_digits,
)
from cpcp.errors import (
    DecryptionFailed,
    NotFound,
    RateLimited,
    StoreError,
    SubmissionRejected,
    Throttled,
    UnknownCodename,
)
from cpcp.i18n import pick_locale
from cpcp.intake import Draft
from cpcp.models import CaseStatus
from cpcp.services import CoreServices
from cpcp.sources import SourceLogin
from cpcp.targetstore import read_targets

from .circuits import caller_of
from .forms import CATEGORIES, KINDS, ActionForm, CSRFForm, FollowUpForm, LoginForm, TipForm
from .upload import TipReceiver
from .web import LANG_COOKIE, gettext, ngettext, safe_next

LOGIN = "login"
NEW_CODENAME = "new_codename"  # shown once more on the first submit page, then dropped
PENDING_CODENAME = "pending_codename"
FLASH = "flash"


class FormRejected(Exception):
    """The tip's fields did not validate; the view re-renders the form with its errors."""

    def __init__(self, form: CSRFForm) -> None:
        super().__init__("form rejected")
        self.form = form


def core() -> CoreServices:
    result: CoreServices = current_app.extensions["cpcp_core"]
    return result


def bind(form_cls: type[CSRFForm], formdata: Any = None, **kwargs: Any) -> Any:
    return form_cls.bound(formdata, secret=core().secrets.source_csrf_key, session=session, **kwargs)


def current_login() -> SourceLogin | None:
    login = session.get(LOGIN)
    return login if isinstance(login, SourceLogin) else None


def logged_out() -> ResponseReturnValue:
    """The session's source was deleted under the retention policy while it was logged in:
    the session ends, and the codename is now unknown, as the login page will say."""
    session.clear()
    return redirect(url_for("login"), 303)


def labels() -> dict[str, dict[str, str]]:
    """Translated labels of the fixed choices (kinds, categories, statuses, unit kinds)."""
    _ = gettext
    return {
        "kind": {
            "information": _("Information"),
            "complaint": _("Complaint"),
            "suggestion": _("Suggestion"),
            "event_feedback": _("Feedback on a festival, gathering or procession"),
        },
        "category": {
            "suspicious_person": _("Suspicious person"),
            "suspicious_vehicle": _("Suspicious vehicle"),
            "criminal_activity": _("Criminal activity"),
            "illegal_trade": _("Illegal trade (drugs, liquor, arms, gambling, cattle smuggling)"),
            "traffic": _("Traffic or road accident"),
            "law_and_order": _("Law and order"),
            "social_safety": _("Social safety"),
            "women_safety": _("Harassment of women"),
            "other": _("Other"),
        },
        "status": {
            CaseStatus.RECEIVED.value: _("Received"),
            CaseStatus.UNDER_REVIEW.value: _("Under review"),
            CaseStatus.ACTION_TAKEN.value: _("Action taken"),
            CaseStatus.CLOSED.value: _("Closed"),
        },
        "unit_kind": {
            "police_station": _("Police stations"),
            "cell": _("Cells"),
            "control_room": _("Control room"),
        },
    }


def rejection_message(reason: str) -> str:
    _ = gettext
    return {
        "too_large": _("The files are too large. Nothing was sent. Send smaller files, or fewer at a time."),
        "too_many_files": _("Too many files at once. Nothing was sent. Send at most %(n)s files at a time.",
                            n=core().settings.max_files_per_submission),
        "malformed": _("The upload was incomplete or damaged. Nothing was sent. Please try again."),
        "empty": _("Your tip is empty. Write something or attach a file."),
        "empty_file": _("The attached file is empty (0 bytes). Nothing was sent. Write something or attach a file that is not empty."),
        "unknown_unit": _("Please choose a police station, cell or the control room from the list."),
        "bad_form": _("Please check the form: some answers are not valid."),
        "expired": _("Your session has ended or the page was too old. Nothing was sent. Log in again with your codename and send it again."),
        "not_multipart": _("The upload was incomplete or damaged. Nothing was sent. Please try again."),
        "honeypot": _("The field marked “leave this field empty” was filled in, as automatic programs do. Nothing was sent. If you are a person, leave that field empty and send again."),
        "no_custodian": _("This site does not accept contact details. Nothing was sent. Remove them and send again."),
        "contact_already": _("Your contact details were already given with your first tip. Nothing was sent."),
    }.get(reason, _("Your tip could not be accepted. Nothing was sent."))


async def error_page(status: int, message: str, title: str | None = None) -> Response:
    body = await render_template("error.html", status=status, title=title or gettext("Something went wrong"),
                                 message=message)
    return Response(body, status=status, content_type="text/html; charset=utf-8")


async def rate_limited_page(oldest: dt.datetime | None) -> Response:
    """429: this codename sent its hour's worth; says in how many minutes to come back."""
    now = dt.datetime.now(dt.UTC)
    free_at = (oldest or now) + dt.timedelta(hours=1)
    minutes = max(1, -(-int((free_at - now).total_seconds()) // 60))
    message = ngettext(
        "You have sent as much as one codename may send in an hour. Nothing was sent. Please come back in %(num)s minute and send it again.",
        "You have sent as much as one codename may send in an hour. Nothing was sent. Please come back in %(num)s minutes and send it again.",
        minutes)
    response = await error_page(429, message, gettext("Please wait"))
    response.headers["Retry-After"] = str(minutes * 60)
    return response


async def tip_form_page(form: TipForm | FollowUpForm, *, status: int = 200, error: str | None = None,
                        case: CaseView | None = None) -> Response:
    units = await core().cases.active_units()
    events = await core().cases.open_events()
    if case is None:
        template = "submit.html"
    else:
        template = "case.html"
    context: dict[str, Any] = {
        "form": form, "error": error, "labels": labels(), "units": units, "kinds": KINDS,
        "categories": CATEGORIES, "new_codename": session.get(NEW_CODENAME), "events": events,
        "max_upload_mib": core().settings.max_upload_bytes // (1024 * 1024),
        "max_files": core().settings.max_files_per_submission,
        "contact_offered": bool(await core().cases.custodian_fingerprints()),
    }
    if case is not None:
        context.update(await case_context(case))
    body = await render_template(template, **context)
    return Response(body, status=status, content_type="text/html; charset=utf-8")


async def case_context(case: CaseView) -> dict[str, Any]:
    login = current_login()
    assert login is not None
    replies = []
    for reply in case.replies:
        try:
            ciphertext = await core().cases.reply_ciphertext(login.source_id, reply.id)
            text = (await core().sources.decrypt_reply(login, ciphertext)).decode("utf-8", "replace")
        except (DecryptionFailed, NotFound, StoreError, OSError):  # one bad reply hides no other
            text = None
        replies.append({"id": reply.id, "sent_at": reply.sent_at, "text": text})
    return {
        "case": case, "replies": replies, "unit_name": case.unit.name(g.locale),
        "delete_form": bind(ActionForm), "flash": session.pop(FLASH, None),
    }


def fill_choices(form: TipForm, units: list[UnitView], events: list[EventView]) -> None:
    form.event.choices = [SelectChoice("")] + [SelectChoice(str(e.id)) for e in events]
    form.unit.choices = [SelectChoice(u.slug) for u in units]
    form.area.choices = [SelectChoice("")] + [
        SelectChoice(u.slug) for u in units if u.kind.value == "police_station"
    ]


def install(app: Quart) -> None:
    @app.before_request
    async def set_locale() -> Response | None:
        g.locale = pick_locale(request.cookies.get(LANG_COOKIE), core().settings.default_locale)
        # Only the submit view reads multipart, and it streams it; anywhere else a multipart
        # body would be spooled to a temp file by the form parser, so it is refused up front.
        if (
            request.method == "POST"
            and request.endpoint != "submit"
            and request.mimetype != "application/x-www-form-urlencoded"
        ):
            return await error_page(415, gettext("This form could not be read. Please try again."))
        return None

    @app.get("/")
    async def index() -> ResponseReturnValue:
        return await render_template("index.html", logged_in=current_login() is not None)

    @app.get("/lang/<code>")
    async def set_language(code: str) -> ResponseReturnValue:
        response = redirect(safe_next(request.args.get("next")), 303)
        if code in ("hi", "en"):
            response.set_cookie(LANG_COOKIE, code, max_age=365 * 24 * 3600, httponly=True,
                                samesite="Strict", path="/")
        return response

    @app.get("/generate")
    async def generate() -> ResponseReturnValue:
        if current_login() is not None:
            return redirect(url_for("case_page"), 303)
        # Digits for those who read Hindi and not English words (?kind=digits; no script).
        digits = request.args.get("kind") == "digits"
        codename: Codename = generate_digit_codename() if digits else generate_codename()
        session[PENDING_CODENAME] = codename
        return await render_template(
            "generate.html", codename=codename.split(), digits=digits, form=bind(ActionForm),
            devanagari=to_devanagari_digits(codename).split() if digits else None,
        )

    @app.post("/create")
    async def create() -> ResponseReturnValue:
        form = bind(ActionForm, await request.form)
        codename = session.get(PENDING_CODENAME)
        if not form.validate() or not codename:
            return await error_page(400, rejection_message("expired"), gettext("Please start again"))
        login = await core().sources.create(Codename(codename), caller=caller_of(request.scope))
        session.pop(PENDING_CODENAME, None)
        session.regenerate()  # type: ignore[attr-defined]
        session[LOGIN] = login
        session[NEW_CODENAME] = codename
        return redirect(url_for("submit_page"), 303)

    @app.get("/submit")
    async def submit_page() -> ResponseReturnValue:
        login = current_login()
        if login is None:
            return redirect(url_for("login"), 303)
        if await core().cases.case_of_source(login.source_id) is not None:
            return redirect(url_for("case_page"), 303)
        if not await core().sources.exists(login.source_id):
            return logged_out()
        form = bind(TipForm)
        fill_choices(form, await core().cases.active_units(), await core().cases.open_events())
        return await tip_form_page(form)

    @app.post("/submit")
    async def submit() -> ResponseReturnValue:
        login = current_login()
        if login is None:
            return await error_page(403, rejection_message("expired"), gettext("Please log in"))
        case = await core().cases.case_of_source(login.source_id)
        if case is None and not await core().sources.exists(login.source_id):
            session.clear()  # deleted under the retention policy while logged in
            return await error_page(403, rejection_message("expired"), gettext("Please log in"))
        limit = core().settings.max_upload_bytes
        if request.content_length is not None and request.content_length > limit + 1024 * 1024:
            return await error_page(413, rejection_message("too_large"))
        if request.mimetype != "multipart/form-data" or "boundary" not in request.mimetype_params:
            return await error_page(400, rejection_message("not_multipart"))
        # Per-codename limits first: past them nothing of the body is even read.
        limits = core().settings.source
        since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        recent = await core().cases.recent_activity(login.source_id, since=since)
        if recent.submissions >= limits.submissions_per_hour or recent.files > limits.files_per_hour:
            return await rate_limited_page(recent.oldest)
        units = await core().cases.active_units()
        events = await core().cases.open_events()
        custodians = await core().cases.custodian_fingerprints()
        form: TipForm | FollowUpForm | None = None
        chosen: list[UnitView] = []

        async def accept_fields(fields: MultiDict[str, str]) -> Draft:
            nonlocal form
            if case is None:
                form = bind(TipForm, fields)
                fill_choices(form, units, events)
            else:
                form = bind(FollowUpForm, fields)
            if not form.validate():
                raise FormRejected(form)
            if form.website.data:
                raise SubmissionRejected("honeypot")  # before any byte reaches gpg or the store
            if isinstance(form, TipForm) and (form.contact.data or "").strip() and not custodians:
                raise SubmissionRejected("no_custodian")
            unit = case.unit if case is not None else await core().cases.unit_by_slug(form.unit.data)
            chosen.append(unit)
            return core().intake.draft(unit, custodians=custodians,
                                       files_budget=max(0, limits.files_per_hour - recent.files))

        receiver = TipReceiver(request.mimetype_params["boundary"].encode("latin-1"),
                               accept_fields=accept_fields)
        try:
            await receiver.run(request.body)
            if receiver.draft is None:
                receiver.draft = await accept_fields(receiver.fields)
            assert form is not None
            draft = receiver.draft
            text = (form.text.data or "").strip()
            if not text and not any(f.size for f in draft.files):
                # Files of 0 bytes carry nothing: with no text, the tip is empty.
                raise SubmissionRejected("empty_file" if draft.files else "empty")
            await draft.add_message(answers(form, chosen[0], text, events, follow_up=case is not None))
            contact = (form.contact.data or "").strip() if isinstance(form, TipForm) else ""
            if contact:
                await draft.add_contact(contact)
            # The kind and category go into the encryption; only the due time they set is kept.
            target = ((await read_targets(core().sessions)).target_for(
                form.kind.data, form.category.data or None) if isinstance(form, TipForm) else None)
            await draft.commit(source_id=login.source_id, unit=chosen[0], reply_target=target)
        except FormRejected as rejected:
            if rejected.form.csrf_failed():
                return await error_page(400, rejection_message("expired"), gettext("Please start again"))
            return await rerender(rejected.form, case, "bad_form", 400)
        except RateLimited:
            return await rate_limited_page(recent.oldest)
        except SubmissionRejected as exc:
            if form is not None and exc.reason in ("empty", "empty_file", "unknown_unit"):
                return await rerender(form, case, exc.reason, exc.status)
            return await error_page(exc.status, rejection_message(exc.reason))
        finally:
            if receiver.draft is not None:
                await receiver.draft.abort()  # no-op after a commit
        session.pop(NEW_CODENAME, None)
        session[FLASH] = "received"
        return redirect(url_for("case_page"), 303)

    async def rerender(form: CSRFForm, case: CaseView | None, reason: str, status: int) -> Response:
        assert isinstance(form, FollowUpForm)
        if isinstance(form, TipForm):
            fill_choices(form, await core().cases.active_units(), await core().cases.open_events())
        return await tip_form_page(form, status=status, error=rejection_message(reason), case=case)

    @app.get("/login")
    async def login() -> ResponseReturnValue:
        if current_login() is not None:
            return redirect(url_for("case_page"), 303)
        return await render_template("login.html", form=bind(LoginForm), error=None)

    @app.post("/login")
    async def login_post() -> ResponseReturnValue:
        form = bind(LoginForm, await request.form)
        if not form.validate():
            if form.csrf_failed():
                return await error_page(400, rejection_message("expired"), gettext("Please start again"))
            body = await render_template("login.html", form=form,
                                         error=gettext("Please type your codename."))
            return Response(body, status=400)
        try:
            login = await core().sources.login(form.codename.data, caller=caller_of(request.scope))
        except Throttled as exc:
            body = await render_template(
                "login.html", form=bind(LoginForm),
                error=ngettext(
                    "Too many wrong codenames came over your connection. Please wait %(num)s "
                    "second and try again, or choose \u201cNew Tor circuit for this site\u201d "
                    "in Tor Browser's menu.",
                    "Too many wrong codenames came over your connection. Please wait %(num)s "
                    "seconds and try again, or choose \u201cNew Tor circuit for this site\u201d "
                    "in Tor Browser's menu.",
                    exc.retry_after))
            return Response(body, status=429, headers={"Retry-After": str(exc.retry_after)})
        except UnknownCodename:
            body = await render_template(
                "login.html", form=bind(LoginForm),
                error=gettext("That codename is not known here. Check every word or digit and try again."))
            return Response(body, status=403)
        session.clear()
        session.regenerate()  # type: ignore[attr-defined]
        session[LOGIN] = login
        return redirect(url_for("case_page"), 303)

    @app.get("/case")
    async def case_page() -> ResponseReturnValue:
        login = current_login()
        if login is None:
            return redirect(url_for("login"), 303)
        case = await core().cases.case_of_source(login.source_id)
        if case is None:
            if not await core().sources.exists(login.source_id):
                return logged_out()
            return redirect(url_for("submit_page"), 303)
        return await tip_form_page(bind(FollowUpForm), case=case)

    @app.post("/replies/<id:reply_id>/delete")
    async def delete_reply(reply_id: int) -> ResponseReturnValue:
        login = current_login()
        form = bind(ActionForm, await request.form)
        if login is None or not form.validate():
            return await error_page(400, rejection_message("expired"), gettext("Please start again"))
        try:
            await core().cases.delete_reply(login.source_id, reply_id)
        except NotFound:
            return await error_page(404, gettext("That reply does not exist or was already deleted."))
        session[FLASH] = "deleted"
        return redirect(url_for("case_page"), 303)

    @app.post("/logout")
    async def logout() -> ResponseReturnValue:
        form = bind(ActionForm, await request.form)
        if not form.validate():
            return await error_page(400, rejection_message("expired"), gettext("Please start again"))
        session.clear()
        return await render_template("logged_out.html")

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        messages = {
            404: gettext("There is no such page."),
            405: gettext("This page cannot be used that way."),
            413: rejection_message("too_large"),
        }
        return await error_page(status, messages.get(status, gettext("The request could not be handled.")))

    @app.errorhandler(Exception)
    async def crash(exc: Exception) -> Response:
        # Logged without the request: no address, no agent, no form content.
        current_app.logger.error("unhandled %s in %s", type(exc).__name__, request.endpoint)
        return await error_page(500, gettext("Something went wrong on our side. Nothing you sent was kept unless you were told it was received."))



def answers(
    form: TipForm | FollowUpForm, unit: UnitView, text: str, events: list[EventView], *, follow_up: bool
) -> dict[str, Any]:
    """The structured message officers read, as plain JSON inside the encryption."""
    out: dict[str, Any] = {
        "follow_up": follow_up,
        "unit": unit.slug,
        "text": text,
        "language": g.locale,
    }
    if isinstance(form, TipForm):
        when: dt.datetime | None = form.when.data
        out.update(
            kind=form.kind.data,
            category=form.category.data or None,
            place=(form.place.data or "").strip() or None,
            police_station_area=form.area.data or None,
            when=when.strftime("%Y-%m-%dT%H:%M") if when else None,
        )
        event = next((e for e in events if str(e.id) == form.event.data), None)
        if event is not None:
            out["event"] = {"id": event.id, "title_en": event.title_en, "title_hi": event.title_hi,
                            "place": event.place, "starts_on": event.starts_on.isoformat()}
    return out
