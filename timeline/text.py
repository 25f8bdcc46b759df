"""The one tokenizer of tweet bodies: plain text, @mentions, #tags and links.

A body is split once, here, into parts: ``["text", s]``, ``["mention", username]``,
``["tag", tag as written, its compared form]`` and ``["url", url]``. The server-rendered page turns the parts into
HTML (``to_html``, every piece escaped once by ``format_html``), and the tweet's JSON carries the
same parts (``timeline.payloads``) for the page's script to build the same elements with DOM
calls and ``textContent``: one set of rules, and no HTML ever made from a string on either side.

- A mention is ``@`` and a username as they are made now (``services.USERNAME_PATTERN``), not
  inside a word or an e-mail address (``me@example.com`` is text).
- A tag is ``#`` and a run of Unicode letters, digits and underscores with at least one letter,
  not inside a word (``C#`` and ``#1`` are text). Tags compare case-insensitively and
  Unicode-aware (``tag_key``: NFKC, then casefold), so ``#Straße`` and ``#STRASSE`` are one.
- A link is ``http://`` or ``https://`` and what follows up to a space or a character that
  cannot be in one; sentence punctuation at its end, and a closing bracket with no opening one
  inside it, stay text. No other scheme is ever a link.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

MAX_TAG_LENGTH = 100
_TOKEN = re.compile(
    r"(?P<url>\bhttps?://[^\s<>\"'`\\]+)"
    r"|(?<![\w@])@(?P<mention>[A-Za-z0-9_]{1,30})(?![\w@])"
    r"|(?<![\w&#])#(?P<tag>\w{1,%d})(?!\w)" % MAX_TAG_LENGTH,
    re.IGNORECASE,
)
_TRAILING = ".,:;!?…"
_PAIRS = {")": "(", "]": "[", "}": "{"}
LINK_REL = "nofollow noopener noreferrer"
SHOWN_URL_LENGTH = 40

Part = list[str]  # [kind, value] ([kind, value, key] for a tag)


def tokenize(body: str) -> list[Part]:
    parts: list[Part] = []
    at = 0
    for match in _TOKEN.finditer(body):
        kind = match.lastgroup
        start, value = match.start(), match.group(kind)
        if kind == "url":
            value = _trim_url(value)
            end = start + len(value)
            if len(value) <= len(value.split("://", 1)[0]) + 3:
                continue  # nothing after the scheme
        else:
            end = match.end()
            if kind == "tag" and not any(c.isalpha() for c in value):
                continue
        if start < at:
            continue
        if start > at:
            parts.append(["text", body[at:start]])
        parts.append([kind, value, tag_key(value)] if kind == "tag" else [kind, value])
        at = end
    if at < len(body):
        parts.append(["text", body[at:]])
    return _merge_text(parts)


def _trim_url(url: str) -> str:
    while url:
        last = url[-1]
        if last in _TRAILING:
            url = url[:-1]
        elif last in _PAIRS and url.count(last) > url.count(_PAIRS[last]):
            url = url[:-1]
        else:
            break
    return url


def _merge_text(parts: list[Part]) -> list[Part]:
    merged: list[Part] = []
    for part in parts:
        if part[0] == "text" and merged and merged[-1][0] == "text":
            merged[-1] = ["text", merged[-1][1] + part[1]]
        else:
            merged.append(part)
    return merged


def tag_key(tag: str) -> str:
    """The form two tags are compared in (and tag pages and trends are keyed by)."""
    return unicodedata.normalize("NFKC", tag).casefold()


def is_tag(candidate: str) -> bool:
    """Whether ``#candidate`` alone would be a tag."""
    return [part[:2] for part in tokenize(f"#{candidate}")] == [["tag", candidate]]


def tags(body: str) -> list[str]:
    """The distinct tags of a body, compared forms, in order of first use."""
    return list(dict.fromkeys(part[2] for part in tokenize(body) if part[0] == "tag"))


def mentions(body: str) -> list[str]:
    """The distinct usernames mentioned, in order."""
    return list(dict.fromkeys(part[1] for part in tokenize(body) if part[0] == "mention"))


def shown_url(url: str) -> str:
    """A link's text: without its scheme, shortened."""
    shown = url.split("://", 1)[1]
    return shown if len(shown) <= SHOWN_URL_LENGTH else shown[: SHOWN_URL_LENGTH - 1] + "…"


def profile_path(username: str) -> str:
    return f"/u/{quote(username)}/"


def tag_path(key: str) -> str:
    return f"/tags/{quote(key, safe='')}/"


def to_html(body: str) -> SafeString:
    """A body as HTML: text escaped, mentions, tags and links as anchors."""
    html = []
    for kind, value, *key in tokenize(body):
        if kind == "mention":
            html.append(format_html('<a class="mention" href="{}">@{}</a>', profile_path(value), value))
        elif kind == "tag":
            html.append(format_html('<a class="tag" href="{}">#{}</a>', tag_path(key[0]), value))
        elif kind == "url":
            html.append(format_html('<a href="{}" rel="{}">{}</a>', value, LINK_REL, shown_url(value)))
        else:
            html.append(format_html("{}", value))
    return mark_safe("".join(html))  # every piece above is escaped by format_html
