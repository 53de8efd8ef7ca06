"""The Redis client: a real server (directly or through Sentinel), or the demo's stand-in.

redis-py parses `redis://`, `rediss://` and `unix://` URLs itself and implements Sentinel, but has
no URL form for a Sentinel deployment; the gateway accepts the common convention

    redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/service_name[/db]
    rediss+sentinel://...        (TLS to the Redis servers)

Sentinels default to port 26379. The password (and username) authenticate to the Redis servers;
`?sentinel_password=...` (and `sentinel_username`) to the Sentinels, when they need it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

DEFAULT_TIMEOUT_SECONDS = 1.0
DEFAULT_SENTINEL_PORT = 26379
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}


class RedisUrlError(ValueError):
    """A Redis URL the gateway cannot use; the message never quotes the URL (it may hold a
    password)."""


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed `redis+sentinel://` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    ssl: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)


def is_sentinel_url(url: str) -> bool:
    """Whether the URL names Redis through Sentinel."""
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


def _host_port(member: str) -> tuple[str, int]:
    host, colon, port = member.strip().rpartition(":")
    if not colon:
        host, port = port, ""
    host = host.strip("[]")  # an IPv6 literal
    if not host:
        raise RedisUrlError("a Sentinel address in GATEWAY_REDIS_URL has no host")
    if not port:
        return host, DEFAULT_SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise RedisUrlError("a Sentinel port in GATEWAY_REDIS_URL is not a port number")
    return host, int(port)


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Split a `redis+sentinel://` URL into the Sentinels, the service and the options."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in SENTINEL_SCHEMES:
        raise RedisUrlError("GATEWAY_REDIS_URL is not a redis+sentinel:// URL")
    # urlsplit refuses a comma-separated host list with IPv6 members, so split by hand.
    location, _, query = rest.partition("?")
    netloc, _, path = location.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    if not at:
        credentials, hosts = "", netloc
    username, _, password = credentials.partition(":")
    members = [member for member in hosts.split(",") if member.strip()]
    if not members:
        raise RedisUrlError("GATEWAY_REDIS_URL names no Sentinel (host:port after the scheme)")
    parts = [unquote(part) for part in path.split("/") if part]
    if not parts or len(parts) > 2:
        raise RedisUrlError(
            "GATEWAY_REDIS_URL must end in /service_name or /service_name/db (the name Sentinel "
            "monitors the Redis master by)"
        )
    if len(parts) == 2 and not parts[1].isdigit():
        raise RedisUrlError(
            "the database after the service name in GATEWAY_REDIS_URL is not a number"
        )
    options = {key: values[-1] for key, values in parse_qs(query).items()}
    unknown = set(options) - {"sentinel_username", "sentinel_password"}
    if unknown:
        raise RedisUrlError(
            "GATEWAY_REDIS_URL has options the gateway does not know: " + ", ".join(sorted(unknown))
        )
    return SentinelUrl(
        sentinels=tuple(_host_port(member) for member in members),
        service_name=parts[0],
        db=int(parts[1]) if len(parts) == 2 else 0,
        ssl=SENTINEL_SCHEMES[scheme.lower()],
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
    )


def _check_plain_url(url: str) -> None:
    # redis-py's own error quotes nothing either, but it does not say which setting is wrong.
    if urlsplit(url).scheme.lower() not in {"redis", "rediss", "unix"}:
        raise RedisUrlError(
            "GATEWAY_REDIS_URL must start with redis://, rediss://, unix://, redis+sentinel://, "
            "rediss+sentinel:// or (the one-process demo only) memory://"
        )


def create_redis(url: str, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> Redis:
    """Connect to Redis; `memory://` gives fakeredis for the single-process demo.

    Every connect and command is bounded by `timeout_seconds` (redis-py's own default is 5 s),
    and a failed one is retried once, at once, on a new connection (what a restarted server
    needs) and never more, so a stalled Redis costs a webhook about twice the timeout.
    """
    if url.startswith("memory://"):
        import fakeredis

        client: Redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        return client
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": timeout_seconds,
        "retry": Retry(NoBackoff(), retries=1),
    }
    if is_sentinel_url(url):
        parsed = parse_sentinel_url(url)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(parsed.sentinels),
            sentinel_kwargs={
                "socket_timeout": timeout_seconds,
                "socket_connect_timeout": timeout_seconds,
                "username": parsed.sentinel_username,
                "password": parsed.sentinel_password,
                "retry": Retry(NoBackoff(), retries=0),
            },
        )
        master: Redis = sentinel.master_for(
            parsed.service_name,
            redis_class=Redis,
            db=parsed.db,
            username=parsed.username,
            password=parsed.password,
            ssl=parsed.ssl,
            **common,
        )
        return master
    _check_plain_url(url)
    return Redis.from_url(url, **common)


_SHAS: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script run by its SHA (EVALSHA), loaded again when the server has lost it.

    Unlike `Redis.register_script`, building one per request costs no hashing: the SHA of
    each script text is computed once per process.
    """

    redis: Redis
    text: str
    sha: str

    async def __call__(self, *, keys: Sequence[str], args: Sequence[str | int] = ()) -> Any:
        """Run the script (one round trip while the server has it cached)."""
        try:
            return await self.redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.redis.script_load(self.text)
            return await self.redis.evalsha(self.sha, len(keys), *keys, *args)


def script(redis: Redis, text: str) -> Script:
    """The script `text` bound to a client."""
    sha = _SHAS.get(text)
    if sha is None:
        sha = _SHAS[text] = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
    return Script(redis, text, sha)
