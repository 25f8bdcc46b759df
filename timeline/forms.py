"""Input forms, shared by the JSON API and the HTML pages."""

from __future__ import annotations

import re
from datetime import datetime, timezone, tzinfo

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from timeline import throttles
from timeline.models import TWEET_MAX_LENGTH
from timeline.validation import validate_unicode


class TextField(forms.CharField):
    """A CharField that also refuses lone surrogates (NUL is refused by CharField itself)."""

    default_validators = [validate_unicode]


_ISO_8601_CHARACTERS = re.compile(r"[0-9TWZtwz:.,+\- ]{1,64}")


class ZonedDateTimeField(forms.CharField):
    """An ISO 8601 date and time with its zone, such as 2026-12-01T09:30:00+01:00 (Z for UTC).

    Without a zone it is refused, unless the field is given one to assume (``naive_zone``: the
    page's form, whose browser input has none).
    """

    def __init__(self, *, naive_zone: tzinfo | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.naive_zone = naive_zone

    def to_python(self, value):
        value = super().to_python(value)
        if value in self.empty_values:
            return None
        try:
            if not _ISO_8601_CHARACTERS.fullmatch(value):  # Python's parser lets some odd ones by
                raise ValueError(value)
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(
                "Use ISO 8601 with a zone, such as 2026-12-01T09:30:00+01:00.", code="invalid"
            ) from None
        if parsed.tzinfo is None:
            if self.naive_zone is None:
                raise ValidationError(
                    "Give the time zone too, such as 2026-12-01T09:30:00+01:00, or Z for UTC.", code="naive"
                )
            parsed = parsed.replace(tzinfo=self.naive_zone)
        return parsed


class TweetForm(forms.Form):
    # Length is checked after trimming, by the service; the field bound here only stops a
    # body so large that it is not worth reading.
    body = TextField(
        strip=False, max_length=TWEET_MAX_LENGTH * 8, error_messages={"required": "Write something first."}
    )
    client_id = forms.UUIDField(error_messages={"invalid": "Must be a UUID, such as one from crypto.randomUUID()."})
    # Absent: post now. Else the tweet is scheduled (timeline.services.tweet_schedule).
    publish_at = ZonedDateTimeField(required=False)

    def clean_body(self) -> str:
        # The service's rule (blank, too long after normalizing), here too, so that a bad body
        # is reported with every other field's error, not after them.
        from timeline.services import validate_tweet_body

        try:
            return validate_tweet_body(self.cleaned_data["body"])
        except ValidationError as exc:
            raise ValidationError(exc.message_dict["body"]) from None


class ComposeForm(TweetForm):
    """The home page's form: its date-and-time input has no zone, and its label says UTC (with
    JavaScript the page sends the browser's own zone through the API instead)."""

    publish_at = ZonedDateTimeField(required=False, naive_zone=timezone.utc)


class LoginForm(forms.Form):
    username = TextField(max_length=get_user_model()._meta.get_field("username").max_length)
    password = TextField(strip=False, widget=forms.PasswordInput, max_length=4096)


class SignupForm(LoginForm):
    """The same fields; the rules for a new name and password are the service's (user_signup)."""


class ThrottledAuthenticationForm(AuthenticationForm):
    """The login page's form (Django's LoginView): the authentication backend throttles failed
    logins for every form (timeline.throttles); this says so in the form's words."""

    def clean(self):
        try:
            return super().clean()
        except throttles.Throttled as exc:
            raise ValidationError(
                f"Too many failed logins; try again in {exc.retry_after} s.", code="throttled"
            ) from None


class ThrottledAdminAuthenticationForm(ThrottledAuthenticationForm, AdminAuthenticationForm):
    """The admin's login form, throttled the same way (admin.site.login_form)."""
