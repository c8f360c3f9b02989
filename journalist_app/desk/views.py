"""Login, home, inbox and sync. Request globals live here, in case_views.py and in web.py."""

from __future__ import annotations

from typing import Any

from quart import Quart, Response, current_app, redirect, request, session, url_for
from quart.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from . import case_views, disclosure_views, timefmt, web
from .charts import bar_chart
from .errors import AccountLocked, DeskError, GatewayError, GatewayUnreachable, Unauthorized
from .forms import ActionForm, LoginForm
from .i18n import _, ngettext
from .inbox import (
    CATEGORIES,
    DISCLOSURE_LABELS,
    KINDS,
    PRIORITY_LABELS,
    RISK_LABELS,
    STATUS_LABELS,
    InboxFilter,
    apply,
    counts,
)
from .pages import (
    TOKEN,
    CsrfRefused,
    bind,
    checked_form,
    desk,
    error_page,
    flash,
    officer_client,
    page,
    unit_names,
)

# The language link too: an officer chooses the language before logging in.
OPEN_ENDPOINTS = {"login", "login_post", "static", "set_language"}
#: The inbox warns when the gateway has been silent for longer than LATE seconds.
LATE = 90


def feed_status() -> dict[str, Any]:
    """What the inbox says about following the gateway: when it last answered, and trouble."""
    follower = desk().follower
    heard = follower.last_heard
    ago = follower.heard_ago()
    return {"state": follower.state, "problem": follower.problem,
            "heard": timefmt.clock(heard, desk().settings.zone) if heard else None,
            "ago": None if ago is None else int(ago),
            "late": follower.state != "off" and (ago is None or ago > LATE or follower.state != "following")}


def install(app: Quart) -> None:
    @app.before_request
    async def require_login() -> ResponseReturnValue | None:
        if (request.endpoint or "") in OPEN_ENDPOINTS or isinstance(session.get(TOKEN), str):
            return None
        if request.method == "GET":
            return redirect(url_for("login"), 303)
        return await error_page(403, _("Please log in first."))

    @app.context_processor
    async def template_globals() -> dict[str, Any]:
        follower = desk().follower
        return {
            "officer": session.get("name"), "action_form": bind(ActionForm),
            "unseen": len(follower.unseen) if session.get("name") else 0,
            "flash": session.pop("flash", None), "kinds": KINDS, "categories": CATEGORIES,
            "statuses": STATUS_LABELS, "priorities": PRIORITY_LABELS,
            "disclosure_statuses": DISCLOSURE_LABELS, "risks": RISK_LABELS,
        }

    @app.get("/login")
    async def login() -> ResponseReturnValue:
        if isinstance(session.get(TOKEN), str):
            return redirect(url_for("home"), 303)
        return await page("login.html", form=bind(LoginForm), error=None)

    @app.post("/login")
    async def login_post() -> ResponseReturnValue:
        form = await checked_form(LoginForm)
        if not form.validate():
            return await page("login.html", status=400, form=form, error=_("Please fill in every field."))
        gateway = desk().require_gateway()
        try:
            token = await gateway.login(form.handle.data.strip(), form.passphrase.data, form.code.data.strip())
            me = await gateway.with_token(token.token).me()
        except AccountLocked as exc:
            return await page("login.html", status=423, form=bind(LoginForm), error=_("Refused: %(reason)s.", reason=exc))
        except Unauthorized:
            return await page("login.html", status=401, form=bind(LoginForm),
                              error=_("Wrong handle, passphrase or code (a code works only once)."))
        except GatewayError as exc:
            return await page("login.html", status=502, form=bind(LoginForm), error=_("Gateway: %(problem)s", problem=exc))
        session.clear()
        session.regenerate()  # type: ignore[attr-defined]
        session.update({TOKEN: token.token, "name": me.name, "officer_id": me.id, "expires": token.expires_at,
                        "custodian": me.is_custodian})
        if desk().settings.follow:
            desk().follower.start(gateway.with_token(token.token))  # new tips come in by themselves
        return redirect(url_for("home"), 303)

    @app.post("/logout")
    async def logout() -> ResponseReturnValue:
        await checked_form(ActionForm)
        try:
            await officer_client().logout()
        except GatewayError:
            pass  # the token expires on its own; the desk forgets it either way
        session.clear()
        await desk().follower.stop()
        desk().casebook.forget()
        return redirect(url_for("login"), 303)

    @app.get("/")
    async def home() -> ResponseReturnValue:
        everything = await desk().casebook.summaries()
        rows = [r for r in everything if not r.case.spam]  # spam is counted apart, as in the inbox
        titles = {"unit": _("New and open cases by unit"), "kind": _("New and open cases by kind"),
                  "category": _("New and open cases by category"),
                  "week": _("New and open cases by week received")}
        charts = {key: bar_chart(bars, title=titles[key])
                  for key, bars in counts(rows, unit_names(), _, desk().settings.zone).items()}
        return await page("home.html", charts=charts, total=len(rows),
                          new=sum(1 for r in rows if r.case.status == "received"),
                          open=sum(1 for r in rows if r.case.status != "closed"),
                          spam=len(everything) - len(rows))

    @app.get("/inbox")
    async def inbox() -> ResponseReturnValue:
        chosen = InboxFilter.from_args(request.args, desk().settings.zone)
        everything = await desk().casebook.summaries()
        rows = apply(everything, chosen)
        units = desk().cache.units()
        feed = feed_status()
        # The inbox alone runs a script: ours, bound to this answer by a nonce (web.py), so that
        # tips the follower brought in appear in place, without a reload.
        nonce = web.allow_script() if feed["state"] != "off" else None
        return await page("inbox.html", rows=rows, chosen=chosen, units=units, feed=feed, nonce=nonce,
                          unit_names=unit_names(),
                          spam_count=sum(1 for r in everything if r.case.spam),
                          custodian=bool(session.get("custodian")))


    @app.post("/sync")
    async def sync() -> ResponseReturnValue:
        await checked_form(ActionForm)
        try:
            report = await desk().cache.sync(officer_client())
        except Unauthorized:
            raise
        except GatewayError as exc:
            flash(_("Sync stopped: %(problem)s. What was downloaded is kept; sync again to resume.",
                    problem=exc), "error")
            return redirect(url_for("inbox"), 303)
        finally:  # what a removed case decrypted leaves memory with its ciphertext
            desk().casebook.drop_uncached()
        # One sentence per figure, each with its own plural: "1 case", never "1 cases".
        parts = [ngettext("Synced %(num)d case.", "Synced %(num)d cases.", report.cases),
                 ngettext("%(num)d new object downloaded.", "%(num)d new objects downloaded.",
                          report.downloaded),
                 ngettext("%(num)d already here.", "%(num)d already here.", report.already_cached)]
        if report.unavailable:
            parts.append(ngettext("%(num)d no longer on the server.", "%(num)d no longer on the server.",
                                  report.unavailable))
        if report.removed:
            parts.append(ngettext("%(num)d case removed (deleted on the server or no longer yours).",
                                  "%(num)d cases removed (deleted on the server or no longer yours).",
                                  report.removed))
        flash(" ".join(parts))
        return redirect(url_for("inbox"), 303)

    case_views.install(app)
    disclosure_views.install(app)

    @app.errorhandler(CsrfRefused)
    async def csrf_refused(exc: CsrfRefused) -> Response:
        return await error_page(400, _("This form was too old or not from this desk. Go back, reload and try again."))

    @app.errorhandler(Unauthorized)
    async def unauthorized(exc: Unauthorized) -> ResponseReturnValue:
        session.clear()
        flash(_("Your login has ended. Please log in again."), "error")
        return redirect(url_for("login"), 303)

    @app.errorhandler(GatewayUnreachable)
    async def unreachable(exc: GatewayUnreachable) -> Response:
        return await error_page(502, _("The gateway could not be reached: %(problem)s. Is Tor running?", problem=exc))

    @app.errorhandler(DeskError)
    async def desk_error(exc: DeskError) -> Response:
        return await error_page(502 if isinstance(exc, GatewayError) else 500, str(exc))

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return await error_page(exc.code or 500, _(exc.description or exc.name))

    @app.errorhandler(Exception)
    async def crash(exc: Exception) -> Response:
        # Logged without the request's content: no form, no plaintext.
        current_app.logger.error("unhandled %s in %s", type(exc).__name__, request.endpoint,
                                 exc_info=current_app.debug)
        return await error_page(500, _("Something went wrong at the desk. Nothing was sent."))
