"""Helpers for views: the desk's collaborators, forms bound to the session, pages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quart import Response, current_app, render_template, request, session

from .errors import Unauthorized
from .forms import CSRFForm
from .i18n import current_locale

if TYPE_CHECKING:
    from . import Desk
    from .client import GatewayClient

TOKEN = "token"


def desk() -> Desk:
    found: Desk = current_app.extensions["cpcp_desk"]
    return found


def bind(form_cls: type[CSRFForm], formdata: Any = None, **kwargs: Any) -> Any:
    return form_cls.bound(formdata, secret=desk().csrf_secret, session=session, **kwargs)


def officer_client() -> GatewayClient:
    token = session.get(TOKEN)
    if not isinstance(token, str):
        raise Unauthorized("not logged in")
    return desk().require_gateway().with_token(token)


def unit_names() -> dict[str, str]:
    """Each unit's name in the page's language."""
    hindi = current_locale() == "hi"
    return {u.slug: u.name_hi if hindi else u.name_en for u in desk().cache.units()}


def flash(message: str, kind: str = "notice") -> None:
    session["flash"] = (kind, message)


async def page(template: str, *, status: int = 200, **context: Any) -> Response:
    body = await render_template(template, **context)
    return Response(body, status=status, content_type="text/html; charset=utf-8")


async def error_page(status: int, message: str) -> Response:
    return await page("error.html", status=status, message=message)


async def checked_form(form_cls: type[CSRFForm]) -> Any:
    """Bind a POSTed form; a missing or wrong CSRF token aborts with a 400 page."""
    form = bind(form_cls, await request.form)
    if not form.validate() and form.csrf_failed():
        raise CsrfRefused()
    return form


class CsrfRefused(Exception):
    pass
