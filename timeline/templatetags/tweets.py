"""{{ tweet.body|tweet_html }}: a body with its mentions, tags and links (timeline.text)."""

from django import template

from timeline import text

register = template.Library()


@register.filter
def tweet_html(body: str | None):
    return text.to_html(body or "")
