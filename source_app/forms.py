"""WTForms forms: validation and CSRF (SessionCSRF, keyed by a server secret) for every POST.

Labels and messages are rendered by the templates in the reader's language; the forms only
validate. File fields are not here: files never pass through WTForms (see upload.py).
"""

from __future__ import annotations

from typing import Any

from wtforms import Form, SelectChoice, SelectField, StringField, TextAreaField
from wtforms.csrf.session import SessionCSRF
from wtforms.fields import DateTimeLocalField
from wtforms.validators import DataRequired, Length, Optional

from cpcp.targets import CATEGORIES, KINDS

__all__ = ["CATEGORIES", "KINDS"]


class CSRFForm(Form):
    """Base of every form: a CSRF token bound to the session, with no time limit of its own
    (the session's idle timeout bounds it, so a long tip is not lost to an expired token)."""

    class Meta:
        csrf = True
        csrf_class = SessionCSRF
        csrf_time_limit = None

    @classmethod
    def bound(cls, formdata: Any, *, secret: bytes, session: Any, **kwargs: Any) -> CSRFForm:
        return cls(formdata=formdata, meta={"csrf_secret": secret, "csrf_context": session}, **kwargs)

    def csrf_failed(self) -> bool:
        return "csrf_token" in self.errors


class ActionForm(CSRFForm):
    """Create account, log out, delete a reply: nothing but the token."""


class LoginForm(CSRFForm):
    codename = StringField(validators=[DataRequired(), Length(max=300)])


class FollowUpForm(CSRFForm):
    text = TextAreaField(validators=[Optional(), Length(max=20_000)])
    # The honeypot: hidden from people (CSS, aria-hidden, out of the tab order), labelled
    # "leave empty"; form-filling bots fill it. No CAPTCHA: that would need JavaScript.
    website = StringField(validators=[Optional(), Length(max=500)])


class TipForm(FollowUpForm):
    unit = SelectField(validators=[DataRequired()], choices=[], validate_choice=True)
    kind = SelectField(choices=[SelectChoice(k) for k in KINDS], validators=[DataRequired()])
    category = SelectField(choices=[SelectChoice(c) for c in ("", *CATEGORIES)],
                           validators=[Optional()], validate_choice=True)
    place = StringField(validators=[Optional(), Length(max=500)])
    area = SelectField(choices=[], validators=[Optional()], validate_choice=True)
    when = DateTimeLocalField(validators=[Optional()], format="%Y-%m-%dT%H:%M")
    event = SelectField(choices=[], validators=[Optional()], validate_choice=True)
    # Optional; sealed to the custodians' keys only (cpcp/intake.py).
    contact = TextAreaField(validators=[Optional(), Length(max=1000)])
