"""{{ tweet.body|tweet_html }}: a body with its mentions, tags and links (timeline.text);
{{ fanout|fanout_json }}: a fan-out as the API's JSON, for the page's script."""

import json

from django import template

from timeline import text
from timeline.payloads import fanout_payload

register = template.Library()


@register.filter
def tweet_html(body: str | None):
    return text.to_html(body or "")


@register.filter
def fanout_json(fanout) -> str:
    return json.dumps(fanout_payload(fanout), separators=(",", ":"))
