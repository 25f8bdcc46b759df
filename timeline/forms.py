"""Input forms, shared by the JSON API and the HTML pages."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model

from timeline.models import TWEET_MAX_LENGTH


class TweetForm(forms.Form):
    # Length is checked after trimming, by the service; the field bound here only stops a
    # body so large that it is not worth reading.
    body = forms.CharField(
        strip=False, max_length=TWEET_MAX_LENGTH * 8, error_messages={"required": "Write something first."}
    )
    client_id = forms.UUIDField(error_messages={"invalid": "Must be a UUID, such as one from crypto.randomUUID()."})


class SignupForm(forms.Form):
    username = forms.CharField(max_length=get_user_model()._meta.get_field("username").max_length)
    password = forms.CharField(strip=False, widget=forms.PasswordInput, max_length=4096)
