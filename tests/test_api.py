"""The rest of the JSON API: accounts, users, follows, the home timeline and health."""

from __future__ import annotations

import json
import uuid

import pytest
from django.contrib.auth import get_user_model

from timeline.models import Follow, Tweet
from timeline.services import follow_create, tweet_create

User = get_user_model()
pytestmark = pytest.mark.django_db


def send(client, method, path, payload=None):
    return getattr(client, method)(path, data=json.dumps(payload or {}), content_type="application/json")


# -- accounts -----------------------------------------------------------------------------------


def test_signup_creates_the_user_and_logs_in(client):
    response = send(client, "post", "/api/auth/signup", {"username": "newbie", "password": "correct horse battery"})
    assert response.status_code == 201
    assert response.json()["user"]["username"] == "newbie"
    assert client.get("/api/timeline/home").status_code == 200


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"username": "taken", "password": "correct horse battery"}, "username"),
        ({"username": "weak", "password": "123"}, "password"),
        ({"username": "bad name!", "password": "correct horse battery"}, "username"),
        ({"username": "", "password": "correct horse battery"}, "username"),
        ({"username": "nopass"}, "password"),
    ],
)
def test_bad_signups_are_400_and_make_no_user(client, make_user, payload, field):
    make_user("taken")
    count = User.objects.count()
    response = send(client, "post", "/api/auth/signup", payload)
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert User.objects.count() == count


def test_login_and_logout(client, make_user):
    make_user("ann", password="ann-password-1")
    bad = send(client, "post", "/api/auth/login", {"username": "ann", "password": "wrong"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_credentials"
    assert client.get("/api/timeline/home").status_code == 401

    assert send(client, "post", "/api/auth/login", {"username": "ann", "password": "ann-password-1"}).status_code == 200
    assert client.get("/api/timeline/home").status_code == 200
    assert send(client, "post", "/api/auth/logout").status_code == 200
    assert client.get("/api/timeline/home").status_code == 401


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/api/timeline/home"),
        ("get", "/api/users/someone"),
        ("get", "/api/users/someone/tweets"),
        ("post", "/api/users/someone/follow"),
        ("delete", "/api/users/someone/follow"),
        ("get", "/api/tweets/1"),
    ],
)
def test_anonymous_api_calls_are_401_json(client, method, path):
    response = getattr(client, method)(path)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "unauthenticated"


def test_the_front_door_says_what_this_is_and_lists_demo_logins_in_demo_mode_only(client, settings, make_user):
    settings.DEMO_MODE = False
    door = client.get("/")
    html = door.content.decode()
    assert door.status_code == 200 and "Short messages from the people you follow" in html
    assert 'href="/signup/"' in html and 'href="/login/"' in html
    assert "demo-pass" not in html and "demo account" not in html
    assert client.get("/tweets/new").status_code in (302, 405)  # the rest still wants a login

    settings.DEMO_MODE = True
    html = client.get("/").content.decode()  # before seeding: no login that would fail
    assert "demo accounts are being made" in html and "demo-pass" not in html
    make_user("alice", password="alice-demo-pass")
    html = client.get("/").content.decode()
    assert "Try it with a demo account" in html and "alice-demo-pass" in html
    assert "bob-demo-pass" not in html  # offered once made, and not before
    signed_in = client.post("/login/", {"username": "alice", "password": "alice-demo-pass", "next": "/"})
    assert (signed_in.status_code, signed_in["Location"]) == (302, "/")
    assert "What is happening?" in client.get("/").content.decode()  # the timeline, logged in


def test_signup_reports_every_problem_at_once(client):
    answer = client.post("/signup/", {"username": "no spaces!", "password": "password"})
    html = answer.content.decode()
    assert answer.status_code == 400
    assert "Use 1 to 30 letters" in html and "This password is too common" in html
    api = client.post(
        "/api/auth/signup", {"username": "no spaces!", "password": "password"}, content_type="application/json"
    )
    assert set(api.json()["error"]["fields"]) == {"username", "password"}


# -- users and follows --------------------------------------------------------------------------


def test_profile_counts_and_followed_by_me(make_user, client_for):
    me, star, fan = make_user(), make_user("star"), make_user()
    follow_create(follower=fan, followee=star)
    client = client_for(me)

    before = client.get("/api/users/star").json()
    assert before == {
        "user": {"id": star.pk, "username": "star"},
        "followers": 1,
        "following": 0,
        "followed_by_me": False,
    }

    response = send(client, "post", "/api/users/star/follow")
    assert response.status_code == 200
    assert response.json()["followers"] == 2 and response.json()["followed_by_me"] is True
    # Following again changes nothing.
    assert send(client, "post", "/api/users/star/follow").status_code == 200
    assert Follow.objects.filter(followee=star).count() == 2

    assert send(client, "delete", "/api/users/star/follow").status_code == 204
    assert client.get("/api/users/star").json()["followed_by_me"] is False
    assert send(client, "delete", "/api/users/star/follow").status_code == 204


def test_following_oneself_is_400_and_unknown_users_404(make_user, client_for):
    me = make_user("me")
    client = client_for(me)
    response = send(client, "post", "/api/users/me/follow")
    assert response.status_code == 400 and response.json()["error"]["code"] == "self_follow"
    assert send(client, "post", "/api/users/nobody/follow").status_code == 404
    assert send(client, "delete", "/api/users/nobody/follow").status_code == 404
    assert client.get("/api/users/nobody").status_code == 404
    assert client.get("/api/users/nobody/tweets").status_code == 404
    assert Follow.objects.count() == 0


def test_user_tweets_page_newest_first(make_user, client_for):
    author = make_user("writer")
    tweets = [tweet_create(author=author, body=f"t{i}", client_id=uuid.uuid4()).tweet for i in range(5)]
    client = client_for(make_user())
    first = client.get("/api/users/writer/tweets?limit=3").json()
    assert [t["id"] for t in first["tweets"]] == [t.pk for t in reversed(tweets[2:])]
    assert first["next_before"] == tweets[2].pk
    second = client.get(f"/api/users/writer/tweets?limit=3&before={first['next_before']}").json()
    assert [t["id"] for t in second["tweets"]] == [tweets[1].pk, tweets[0].pk]
    assert second["next_before"] is None


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "limit=x",
        "before=-1",
        "before=abc",
        "after=-5",
        "after=1.5",
        "before=99999999999999999999999",
    ],
)
def test_bad_paging_parameters_are_400(make_user, client_for, query):
    response = client_for(make_user()).get(f"/api/timeline/home?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["fields"]


def test_home_timeline_pages(make_user, client_for):
    me, friend = make_user(), make_user()
    follow_create(follower=me, followee=friend)
    tweets = [tweet_create(author=a, body="x", client_id=uuid.uuid4()).tweet for a in (me, friend) * 3]
    client = client_for(me)
    page = client.get("/api/timeline/home?limit=4").json()
    assert [t["id"] for t in page["tweets"]] == [t.pk for t in reversed(tweets)][:4]
    rest = client.get(f"/api/timeline/home?limit=4&before={page['next_before']}").json()
    assert [t["id"] for t in rest["tweets"]] == [t.pk for t in reversed(tweets)][4:]
    assert rest["next_before"] is None
    newer = client.get(f"/api/timeline/home?after={tweets[3].pk}").json()
    assert [t["id"] for t in newer["tweets"]] == [tweets[5].pk, tweets[4].pk]


def test_output_is_escaped_in_html(make_user, client_for):
    author = make_user()
    tweet_create(author=author, body="<script>alert(1)</script>", client_id=uuid.uuid4())
    html = client_for(author).get("/").content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_healthz_reports_db_and_redis(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True, "db": True, "redis": True}
    assert Tweet.objects.count() == 0


def test_an_unknown_address_says_so_plainly(client):
    page = client.get("/no/such/page/")
    html = page.content.decode()
    assert page.status_code == 404 and "There is nothing at this address." in html
    assert "Resolver404" not in html
    missing = client.get("/u/nobody_here/")
    assert missing.status_code == 404 and "There is no user called nobody_here." in missing.content.decode()
