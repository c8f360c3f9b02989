"""Login, home, inbox and sync. Request globals live here, in case_views.py and in web.py."""

from __future__ import annotations

from typing import Any

from quart import Quart, Response, current_app, redirect, request, session, url_for
from quart.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from . import case_views, disclosure_views
from .charts import bar_chart
from .errors import AccountLocked, DeskError, GatewayError, GatewayUnreachable, Unauthorized
from .forms import ActionForm, LoginForm
from .inbox import CATEGORIES, KINDS, STATUS_LABELS, InboxFilter, apply, counts
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
)

OPEN_ENDPOINTS = {"login", "login_post", "static"}
#: The inbox reloads itself this often (the desk runs no script), and warns when the gateway
#: has been silent for longer than LATE seconds.
INBOX_REFRESH = 15
LATE = 90


def feed_status() -> dict[str, Any]:
    """What the inbox says about following the gateway: when it last answered, and trouble;
    whether it reloads itself (the officer's choice, kept in the session)."""
    follower = desk().follower
    heard = follower.last_heard
    ago = follower.heard_ago()
    return {"state": follower.state, "problem": follower.problem, "refresh": INBOX_REFRESH,
            "live": follower.state != "off" and bool(session.get("live")),
            "heard": heard.strftime("%H:%M:%S") if heard else None,
            "ago": None if ago is None else int(ago),
            "late": follower.state != "off" and (ago is None or ago > LATE or follower.state != "following")}


def install(app: Quart) -> None:
    @app.before_request
    async def require_login() -> ResponseReturnValue | None:
        if (request.endpoint or "") in OPEN_ENDPOINTS or isinstance(session.get(TOKEN), str):
            return None
        if request.method == "GET":
            return redirect(url_for("login"), 303)
        return await error_page(403, "Please log in first.")

    @app.context_processor
    async def template_globals() -> dict[str, Any]:
        follower = desk().follower
        return {
            "officer": session.get("name"), "action_form": bind(ActionForm),
            "unseen": len(follower.unseen) if session.get("name") else 0,
            "flash": session.pop("flash", None), "kinds": KINDS, "categories": CATEGORIES,
            "statuses": STATUS_LABELS,
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
            return await page("login.html", status=400, form=form, error="Please fill in every field.")
        gateway = desk().require_gateway()
        try:
            token = await gateway.login(form.handle.data.strip(), form.passphrase.data, form.code.data.strip())
            me = await gateway.with_token(token.token).me()
        except AccountLocked as exc:
            return await page("login.html", status=423, form=bind(LoginForm), error=f"Refused: {exc}.")
        except Unauthorized:
            return await page("login.html", status=401, form=bind(LoginForm),
                              error="Wrong handle, passphrase or code (a code works only once).")
        except GatewayError as exc:
            return await page("login.html", status=502, form=bind(LoginForm), error=f"Gateway: {exc}")
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
        names = {u.slug: u.name_en for u in desk().cache.units()}
        charts = {key: bar_chart(bars, title=f"New and open cases by {key}")
                  for key, bars in counts(rows, names).items()}
        return await page("home.html", charts=charts, total=len(rows),
                          new=sum(1 for r in rows if r.case.status == "received"),
                          open=sum(1 for r in rows if r.case.status != "closed"),
                          spam=len(everything) - len(rows))

    @app.get("/inbox")
    async def inbox() -> ResponseReturnValue:
        chosen = InboxFilter.from_args(request.args)
        everything = await desk().casebook.summaries()
        rows = apply(everything, chosen)
        units = desk().cache.units()
        return await page("inbox.html", rows=rows, chosen=chosen, units=units, feed=feed_status(),
                          unit_names={u.slug: u.name_en for u in units},
                          spam_count=sum(1 for r in everything if r.case.spam),
                          custodian=bool(session.get("custodian")))

    @app.post("/inbox/live")
    async def inbox_live() -> ResponseReturnValue:
        await checked_form(ActionForm)
        session["live"] = not session.get("live")
        return redirect(url_for("inbox"), 303)

    @app.post("/sync")
    async def sync() -> ResponseReturnValue:
        await checked_form(ActionForm)
        try:
            report = await desk().cache.sync(officer_client())
        except Unauthorized:
            raise
        except GatewayError as exc:
            flash(f"Sync stopped: {exc}. What was downloaded is kept; sync again to resume.", "error")
            return redirect(url_for("inbox"), 303)
        finally:  # what a removed case decrypted leaves memory with its ciphertext
            desk().casebook.drop_uncached()
        flash(f"Synced {report.cases} cases: {report.downloaded} new objects downloaded, "
              f"{report.already_cached} already here"
              + (f", {report.unavailable} no longer on the server" if report.unavailable else "")
              + (f", {report.removed} cases removed (deleted on the server or no longer yours)"
                 if report.removed else "") + ".")
        return redirect(url_for("inbox"), 303)

    case_views.install(app)
    disclosure_views.install(app)

    @app.errorhandler(CsrfRefused)
    async def csrf_refused(exc: CsrfRefused) -> Response:
        return await error_page(400, "This form was too old or not from this desk. Go back, reload and try again.")

    @app.errorhandler(Unauthorized)
    async def unauthorized(exc: Unauthorized) -> ResponseReturnValue:
        session.clear()
        flash("Your login has ended. Please log in again.", "error")
        return redirect(url_for("login"), 303)

    @app.errorhandler(GatewayUnreachable)
    async def unreachable(exc: GatewayUnreachable) -> Response:
        return await error_page(502, f"The gateway could not be reached: {exc}. Is Tor running?")

    @app.errorhandler(DeskError)
    async def desk_error(exc: DeskError) -> Response:
        return await error_page(502 if isinstance(exc, GatewayError) else 500, str(exc))

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return await error_page(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    async def crash(exc: Exception) -> Response:
        # Logged without the request's content: no form, no plaintext.
        current_app.logger.error("unhandled %s in %s", type(exc).__name__, request.endpoint,
                                 exc_info=current_app.debug)
        return await error_page(500, "Something went wrong at the desk. Nothing was sent.")
