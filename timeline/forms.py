"""Input forms, shared by the JSON API and the HTML pages."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from timeline import throttles
from timeline.models import TWEET_MAX_LENGTH
from timeline.validation import validate_unicode


class TextField(forms.CharField):
    """A CharField that also refuses lone surrogates (NUL is refused by CharField itself)."""

    default_validators = [validate_unicode]


class TweetForm(forms.Form):
    # Length is checked after trimming, by the service; the field bound here only stops a
    # body so large that it is not worth reading.
    body = TextField(
        strip=False, max_length=TWEET_MAX_LENGTH * 8, error_messages={"required": "Write something first."}
    )
    client_id = forms.UUIDField(error_messages={"invalid": "Must be a UUID, such as one from crypto.randomUUID()."})


class LoginForm(forms.Form):
    username = TextField(max_length=get_user_model()._meta.get_field("username").max_length)
    password = TextField(strip=False, widget=forms.PasswordInput, max_length=4096)


class SignupForm(LoginForm):
    """The same fields; the rules for a new name and password are the service's (user_signup)."""


class ThrottledAuthenticationForm(AuthenticationForm):
    """The login page's form (Django's LoginView), with the same throttles as the API's login."""

    def clean(self):
        username, password = self.cleaned_data.get("username"), self.cleaned_data.get("password")
        if not (username and password):
            return super().clean()
        address = throttles.client_address(self.request)
        try:
            throttles.check_login(username=username, address=address)
        except throttles.Throttled as exc:
            raise ValidationError(
                f"Too many failed logins; try again in {exc.retry_after} s.", code="throttled"
            ) from None
        try:
            return super().clean()
        except ValidationError:
            throttles.login_failed(username=username, address=address)
            raise
