"""Settings for the timeline project, all read from the environment through timeline.config."""

from pathlib import Path

from timeline import config

BASE_DIR = Path(__file__).resolve().parent.parent
# Where the local state lives: the SQLite database, the private Redis's files, the secret key.
VAR_DIR = config.env_path("VAR_DIR", BASE_DIR / "var")

DEBUG = config.env_bool("DJANGO_DEBUG", False)
# Demo mode (make run): demo accounts exist, and the logged-out home page lists their logins.
DEMO_MODE = config.env_bool("SEED_DEMO", False)
SECRET_KEY = config.secret_key(VAR_DIR)
PORT = config.env_int("PORT", 8000, minimum=1, maximum=65535)
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"] + [
    host.strip() for host in config.os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if host.strip()
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "django_rq",
    "csp",
    "timeline",
    "fanout",
]

MIDDLEWARE = [
    "timeline.middleware.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "timeline.middleware.ServiceUnavailableMiddleware",
]

ROOT_URLCONF = "timeline.urls"
ASGI_APPLICATION = "timeline.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "timeline.context_processors.demo_mode",
            ],
        },
    },
]

# The database is the source of truth. SQLite is the embedded default, tuned so that a web
# process and several workers can write at once: WAL lets readers run beside the one writer,
# IMMEDIATE transactions take the write lock up front (a deferred transaction that upgrades
# later can fail at once with "database is locked"), and the timeout makes writers queue.
#
# Every wait on the database is bounded by DATABASE_WAIT_SECONDS: for SQLite's write lock, for
# a connection from PostgreSQL's pool or a new one, for a PostgreSQL lock. Past it the request
# answers 503 with Retry-After (timeline.middleware) and nothing is half-written, rather than
# hanging for as long as the database is away; a worker's attempt fails and is retried.
DATABASE_WAIT_SECONDS = 2
DATABASES = {"default": config.env_database("DATABASE_URL", VAR_DIR / "db.sqlite3")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": DATABASE_WAIT_SECONDS,  # sqlite:///path?timeout=N sets another
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        **DATABASES["default"].get("OPTIONS", {}),
    }
    # A file, not memory, so that the daphne and worker processes of the end-to-end tests share
    # it; named per test run, so that two runs on one checkout do not trample each other.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-db-{config.os.getpid()}.sqlite3")}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    # A web process that dies in the middle of a post (a host lost, not a clean exit) leaves its
    # session idle inside the transaction, holding posting's advisory lock (timeline.services)
    # until TCP gives up on it, hours later. The server ends such a session after 30 s instead.
    # Options given in DATABASE_URL come last, so they win.
    _wait_ms = DATABASE_WAIT_SECONDS * 1000
    _defaults = f"-c lock_timeout={_wait_ms} -c idle_in_transaction_session_timeout=30000"
    _options["options"] = f"{_defaults} {_options.get('options', '')}".strip()
    _options.setdefault("connect_timeout", max(DATABASE_WAIT_SECONDS, 2))  # libpq's least is 2
    # Each process keeps a few connections open and lends one to each request: without a pool
    # every request started a server backend of its own, which cost PostgreSQL more CPU than the
    # post itself (bench/capacity.py). A lent connection is checked first, so one the server
    # dropped (a restart, the timeout above) is replaced rather than handed out.
    #
    # While the server is away, the pool retries a lost connection with a backoff that doubles
    # (1, 2, 4... s) for ``reconnect_timeout``, and starts no other attempt meanwhile: with the
    # default (5 minutes) a web process could go on answering 503 for half a minute after the
    # server came back. Given up after a few seconds, the next request that needs a connection
    # tries at once (a refused connection costs nothing), so processes are back within seconds.
    _options.setdefault(
        "pool", {"min_size": 2, "max_size": 16, "timeout": DATABASE_WAIT_SECONDS, "reconnect_timeout": 5}
    )
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = config.env_redis_url("REDIS_URL", f"unix://{VAR_DIR / 'redis' / 'redis.sock'}")
# Home timelines may live elsewhere: another Redis, or (TIMELINE_REDIS_CLUSTER) a Redis Cluster
# named by any one of its nodes. Everything else stays on REDIS_URL: RQ needs a single Redis.
TIMELINE_REDIS_URL = config.env_redis_url("TIMELINE_REDIS_URL", REDIS_URL)
TIMELINE_REDIS_CLUSTER = config.env_bool("TIMELINE_REDIS_CLUSTER", False)
if TIMELINE_REDIS_CLUSTER and not TIMELINE_REDIS_URL.startswith(("redis://", "rediss://")):
    raise config.ConfigError(
        "TIMELINE_REDIS_URL", "must name a cluster node as redis://host:port with TIMELINE_REDIS_CLUSTER"
    )

# Fan-out: how many jobs may wait before POST /api/tweets sheds load (0 turns the cap off),
# how many followers one batch of timeline writes covers, and how long a home timeline is.
FANOUT_QUEUE_CAP = config.env_int("FANOUT_QUEUE_CAP", 100)
FANOUT_BATCH_SIZE = config.env_int("FANOUT_BATCH_SIZE", 1000, minimum=1, maximum=100_000)
TIMELINE_CAP = config.env_int("TIMELINE_CAP", 800, minimum=10, maximum=100_000)
# Authors with more followers than this are merged into their followers' timelines on read
# instead of fanned out on write (fanout.delivery, fanout.timelines); 0 fans everyone out.
FANOUT_ON_READ_THRESHOLD = config.env_int("FANOUT_ON_READ_THRESHOLD", 5000)
# A home timeline nobody reads for this many days leaves Redis (a read renews it); fan-out then
# stops writing into it, and the owner's next read rebuilds it from the database.
TIMELINE_IDLE_DAYS = config.env_int("TIMELINE_IDLE_DAYS", 7, minimum=1, maximum=3650)
# A worker holds a running fan-out's lease this long and renews it with every batch; when a
# worker dies, the relay gives its fan-out to another one this many seconds (plus one) later.
FANOUT_LEASE_SECONDS = config.env_int("FANOUT_LEASE_SECONDS", 5, minimum=1, maximum=3600)

# Processes `make run` starts (supervisord.conf); read here so that a bad value stops start-up.
WEB_PROCESSES = config.env_int("WEB_PROCESSES", config.os.cpu_count() or 1, minimum=1, maximum=256)
WORKERS = config.env_int("WORKERS", 2, minimum=0, maximum=256)

# HTTP requests one web process works on at once; past it, 503 at the door (0 turns it off).
WEB_MAX_IN_FLIGHT = config.env_int("WEB_MAX_IN_FLIGHT", 32)
# Of those, how many run in Django at once, each on a thread; the rest wait in the event loop.
WEB_THREADS = config.env_int("WEB_THREADS", 8)

# The largest request body any route takes (Django's own bound for form data, kept here for
# every body): the JSON API takes at most 64 KB (timeline.validation), the admin's forms a little
# more. Larger ones are refused with 413 before they are read (timeline.serve, timeline.limits).
DATA_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024

# Throttles (timeline/throttles.py): (count, window in seconds) per key; 0 turns one off.
THROTTLES = {
    # Failed logins: a client on one account; a client on any; an account from anywhere (past
    # it, only clients that have not failed on the account may try: see timeline.throttles).
    "login_failures_per_account_and_address": (10, 60),
    "login_failures_per_address": (30, 300),
    "login_failures_per_account": (10, 60),
    "signups_per_address": (10, 3600),
    "follow_toggles_per_user": (60, 60),
}

# Websockets one account may hold at once (across every web process); a newer one closes the oldest.
SOCKETS_PER_USER = config.env_int("SOCKETS_PER_USER", 20, minimum=1, maximum=100_000)

# A per-author rate limit, which is not overload: over it, POST /api/tweets answers 429.
TWEET_RATE_LIMIT = config.env_int("TWEET_RATE_LIMIT", 60)  # tweets per window; 0 turns it off
TWEET_RATE_WINDOW = config.env_int("TWEET_RATE_WINDOW", 60, minimum=1, maximum=86400)  # seconds

RQ_QUEUES = {
    name: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 300, "SERIALIZER": "rq.serializers.JSONSerializer"}
    for name in ("scheduled", "fanout", "default")
}
RQ_SHOW_ADMIN_LINK = True

# The channel layer, on the same Redis, so that workers in other processes can push. Pub/sub
# is the default, chosen by measurement (docs/benchmarks.md): events to a socket that is not
# there are simply dropped, which suits live push (gaps are filled from the timeline), and it
# keeps no per-channel lists. CHANNEL_LAYER=redis selects the list-based layer, for comparison.
_CHANNEL_LAYER_BACKENDS = {
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
    "redis": "channels_redis.core.RedisChannelLayer",
}
_channel_layer = config.os.environ.get("CHANNEL_LAYER", "").strip().lower() or "pubsub"
if _channel_layer not in _CHANNEL_LAYER_BACKENDS:
    raise config.ConfigError(
        "CHANNEL_LAYER", f"must be one of {', '.join(_CHANNEL_LAYER_BACKENDS)}, got {_channel_layer!r}"
    )
# The list-based layer blocks on BZPOPMIN for up to 5 s, and redis-py 8 gives connections a
# 5 s read timeout by default, which would abort that wait and drop idle sockets.
_channel_layer_host = REDIS_URL if _channel_layer == "pubsub" else {"address": REDIS_URL, "socket_timeout": None}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": _CHANNEL_LAYER_BACKENDS[_channel_layer],
        "CONFIG": {"hosts": [_channel_layer_host]},
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
    {"NAME": "timeline.validation.NotOnlyWhitespacePasswordValidator"},
]
# Sessions live in the database and are read from Redis (timeline.sessions); the backend also
# keeps in Redis what the hot reads need to authenticate a session (timeline.identity).
SESSION_ENGINE = "timeline.sessions"
AUTHENTICATION_BACKENDS = ["timeline.identity.RememberingModelBackend"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
CSRF_FAILURE_VIEW = "timeline.api.csrf_failure"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

# Behind TLS (a proxy that terminates it and sets X-Forwarded-Proto): Secure cookies, HSTS,
# and requests over plain HTTP redirected. Off by default so that `make run` works on http://.
DJANGO_SECURE = config.env_bool("DJANGO_SECURE", False)
if DJANGO_SECURE:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # the balancer's health check may come over HTTP
    SECURE_HSTS_SECONDS = 365 * 24 * 3600
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True

# No inline script or style anywhere (the pages load ES modules and one stylesheet), so an
# injected <script> would not run even if escaping ever failed. django-rq's dashboard is the
# one exception (timeline/urls.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Served by WhiteNoise straight from the source folders (no collectstatic step to forget).
STATIC_ROOT = None
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

_PROCESS_NAME = (config.os.environ.get("SUPERVISOR_PROCESS_NAME", "") + " ").lstrip()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Under `make run`, supervisor names each process (web_0, worker_1...): say which one logged.
    "formatters": {"plain": {"format": f"%(asctime)s {_PROCESS_NAME}%(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "filters": {
        # A 503 is load shed on purpose (or an outage, logged once where it is met), not a bug.
        "not_shed": {"()": "django.utils.log.CallbackFilter", "callback": lambda r: getattr(r, "status_code", 0) != 503}
    },
    "loggers": {
        # Server errors to the console: with DEBUG off Django would only mail them to admins.
        "django.request": {"handlers": ["console"], "level": "ERROR", "filters": ["not_shed"], "propagate": False},
        # A request with a Host we do not serve gets its 400; logging each (with the header's
        # text, of any length) would let anyone fill the log.
        "django.security.DisallowedHost": {"handlers": [], "propagate": False},
        "timeline": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # The pool says so at each attempt while the database is away; an outage is logged
        # where it is met (timeline.middleware, the cron), once.
        "psycopg.pool": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        "fanout": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}

# /metrics answers staff, and a Prometheus server sending "Authorization: Bearer <METRICS_TOKEN>".
METRICS_TOKEN = config.env_token("METRICS_TOKEN")
