"""Mentions, tags and links: the one tokenizer against hostile bodies, the pages it links to,
and the mention.new event on the real channel layer."""

from __future__ import annotations

import html
import re
import uuid

import pytest
from asgiref.sync import sync_to_async

from fanout import delivery
from tests.test_live import connect
from timeline import services, text
from timeline.models import TweetTag
from timeline.payloads import tweet_payload

pytestmark = pytest.mark.django_db(transaction=True)

HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "@<b>bob</b> #<i>tag</i>",
    "javascript:alert(1) data:text/html,<script>alert(1)</script>",
    'https://example.com/"onmouseover="alert(1)',
    "https://example.com/<script>",
    "&lt;already escaped&gt; &amp; #&amp;",
    "\u202eevil\u202c @bob\u200b #tag\u0000",
    "https://exa mple.com @ # https://",
    "#" + "a" * 101 + " @" + "b" * 31,
    "((https://example.com/a_(b)))...",
]


def joined(parts) -> str:
    return "".join({"mention": "@", "tag": "#"}.get(part[0], "") + part[1] for part in parts)


@pytest.mark.parametrize("body", HOSTILE)
def test_parts_rebuild_the_body_and_the_html_escapes_it_exactly_once(body):
    parts = text.tokenize(body)
    assert joined(parts) == body  # nothing lost, nothing added
    rendered = str(text.to_html(body))
    # The text of the HTML, tags stripped and entities read back once, holds every text part
    # as written: escaped once (twice would read back "&lt;", never would leave a tag).
    visible = html.unescape(re.sub(r"<[^>]*>", "", rendered))
    for kind, value, *_ in parts:
        if kind == "text":
            assert value in visible
    anchors = re.findall(r"<a ([^>]*)>", rendered)
    assert len(anchors) == sum(part[0] != "text" for part in parts)
    for attributes in anchors:
        href = re.search(r'href="([^"]*)"', attributes).group(1)
        assert href.startswith(("/u/", "/tags/", "http://", "https://")), href
    assert "<script" not in rendered and "<img" not in rendered and "<b>" not in rendered


def test_what_is_a_mention_a_tag_and_a_link():
    parts = text.tokenize(
        "hi @bob, see https://example.com/a_(b). #Django #1 C# me@example.com #Straße @x. (https://x.org/p)"
    )
    assert [p for p in parts if p[0] != "text"] == [
        ["mention", "bob"],
        ["url", "https://example.com/a_(b)"],
        ["tag", "Django", "django"],
        ["tag", "Straße", "strasse"],
        ["mention", "x"],
        ["url", "https://x.org/p"],
    ]
    assert text.tags("#Django and #DJANGO and #straße #STRASSE #日本語") == ["django", "strasse", "日本語"]
    assert text.mentions("@Ann and @ann @bob") == ["Ann", "ann", "bob"]


def test_links_are_nofollow_and_shortened():
    rendered = str(text.to_html("https://example.com/" + "x" * 60))
    assert 'rel="nofollow noopener noreferrer"' in rendered
    assert ">example.com/" + "x" * 27 + "…</a>" in rendered


def post(author, body):
    return services.tweet_create(author=author, body=body, client_id=uuid.uuid4()).tweet


def test_the_payload_carries_the_parts_the_page_renders(make_user):
    tweet = post(make_user(), "a #Tag for @someone https://example.com")
    assert tweet_payload(tweet)["parts"] == text.tokenize(tweet.body)


def test_a_tag_page_lists_tagged_tweets_newest_first_and_pages(make_user, client_for, settings):
    author = make_user()
    tagged = [post(author, f"number {i} #Python") for i in range(22)]
    post(author, "#Pythonic is another tag")
    assert TweetTag.objects.filter(tag="python").count() == 22
    client = client_for(make_user())

    first = client.get("/tags/PYTHON/")
    assert first.status_code == 200
    shown = [int(i) for i in re.findall(r'class="tweet" data-tweet-id="(\d+)"', first.content.decode())]
    assert shown == [t.pk for t in reversed(tagged)][:20]
    older = re.search(r'href="/tags/python/\?before=(\d+)"', first.content.decode())
    second = client.get(f"/tags/python/?before={older.group(1)}")
    shown = [int(i) for i in re.findall(r'class="tweet" data-tweet-id="(\d+)"', second.content.decode())]
    assert shown == [tagged[1].pk, tagged[0].pk]
    assert client.get("/tags/123/").status_code == 404  # not a tag
    assert client.get("/tags/python/?before=nope").status_code == 400


def test_a_tweet_has_a_page_of_its_own_linked_from_its_time(make_user, client_for):
    tweet = post(make_user(), "look at @nobody_here and #things")
    client = client_for(make_user())
    page = client.get(f"/t/{tweet.pk}/")
    assert page.status_code == 200
    body = page.content.decode()
    assert f'<a class="tweet-permalink" href="/t/{tweet.pk}/">' in body
    assert '<a class="tag" href="/tags/things/">#things</a>' in body
    assert '<a class="mention" href="/u/nobody_here/">@nobody_here</a>' in body
    assert client.get(f"/t/{tweet.pk + 1000}/").status_code == 404


async def test_the_mentioned_are_told_once_it_is_delivered(make_user):
    author, named, other = [await sync_to_async(make_user)() for _ in range(3)]
    socket_named, ok1 = await connect(named)
    socket_other, ok2 = await connect(other)
    socket_author, ok3 = await connect(author)
    assert ok1 and ok2 and ok3
    body = f"thanks @{named.username.upper()} and @{author.username} and @nobody_by_that_name"
    tweet = await sync_to_async(post)(author, body)

    await sync_to_async(delivery.deliver_tweet)(tweet_id=tweet.pk)

    told = await socket_named.receive_json_from(timeout=5)
    assert told["type"] == "mention.new" and told["tweet"]["id"] == tweet.pk
    assert await socket_other.receive_nothing(timeout=0.3)
    frames = []
    while not await socket_author.receive_nothing(timeout=0.3):
        frames.append(await socket_author.receive_json_from(timeout=1))
    assert "mention.new" not in {f["type"] for f in frames}  # not for mentioning oneself
    for socket in (socket_named, socket_other, socket_author):
        await socket.disconnect()
