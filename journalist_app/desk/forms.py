# mypy: disallow-subclassing-any=False
"""WTForms forms of the desk: validation and CSRF (SessionCSRF, keyed by a secret made at
start-up) for every form that changes something. The inbox filter is a GET form that changes
nothing and carries no token, so no token ever lands in a URL."""

from __future__ import annotations

from typing import Any

from wtforms import Form, PasswordField, SelectChoice, SelectField, StringField, TextAreaField
from wtforms.csrf.session import SessionCSRF
from wtforms.validators import DataRequired, Length, Optional, Regexp

from .i18n import N_
from .wire import PRIORITIES, STATUSES

# WTForms has no Hindi catalogue: every message a page can show is the desk's own, in English
# here and translated where the page shows it.
REQUIRED = N_("This field is required.")
TOO_LONG = N_("This is too long.")
NOT_A_CHOICE = N_("Not a valid choice.")  # WTForms' own wording for a select's unknown value

MAX_REPLY_CHARS = 20_000


class CSRFForm(Form):
    """Base of every desk form: a CSRF token bound to the (in-memory) session."""

    class Meta:
        csrf = True
        csrf_class = SessionCSRF
        csrf_time_limit = None  # the session's idle timeout bounds it

    @classmethod
    def bound(cls, formdata: Any, *, secret: bytes, session: Any, **kwargs: Any) -> Any:
        return cls(formdata=formdata, meta={"csrf_secret": secret, "csrf_context": session}, **kwargs)

    def csrf_failed(self) -> bool:
        return "csrf_token" in self.errors


class ActionForm(CSRFForm):
    """Sync, log out, export: nothing but the token."""


class LoginForm(CSRFForm):
    handle = StringField(validators=[DataRequired(REQUIRED), Length(max=64, message=TOO_LONG)])
    passphrase = PasswordField(validators=[DataRequired(REQUIRED), Length(max=1024, message=TOO_LONG)])
    code = StringField(validators=[DataRequired(REQUIRED), Regexp(r"^\s*\d{6}\s*$", message=N_("six digits"))])


class ReplyForm(CSRFForm):
    text = TextAreaField(validators=[DataRequired(REQUIRED), Length(max=MAX_REPLY_CHARS, message=TOO_LONG)])


class CaseForm(CSRFForm):
    status = SelectField(choices=[SelectChoice(s, s.replace("_", " ").capitalize()) for s in STATUSES],
                         validators=[DataRequired(REQUIRED)])
    priority = SelectField(choices=[SelectChoice(p, p.capitalize()) for p in PRIORITIES],
                           validators=[DataRequired(REQUIRED)])
    assignee = SelectField(choices=[SelectChoice("")], validators=[Optional()], validate_choice=True)
    labels = StringField(validators=[Optional(), Length(max=500, message=TOO_LONG)])


class DisclosureForm(CSRFForm):
    """Ask a custodian for a source's sealed contact details: a reason is required."""

    reason = TextAreaField(validators=[DataRequired(message=N_("a reason is required")),
                                       Length(max=1000, message=TOO_LONG)])


class SpamForm(CSRFForm):
    spam = SelectField(choices=[SelectChoice("1"), SelectChoice("0")], validators=[DataRequired(REQUIRED)])
