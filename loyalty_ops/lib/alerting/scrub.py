"""Remove secrets from anything that leaves the platform in an alert.

Error messages of failed steps are copied into pages, and they can carry a connection string with a
password, a libpq ``password=`` keyword, an ``Authorization`` header or a token. Every string of every
payload goes through :func:`scrub_payload` before it is sent or stored. Two layers:

* patterns that look like credentials whatever their value (URL user-info, ``key=value`` pairs whose key
  names a secret, bearer tokens, AWS access key ids, Slack tokens);
* the literal values of the secrets this process knows (its own routing key, Slack token, webhook URL,
  database password, ...), replaced wherever they appear, even inside words.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping
from urllib.parse import unquote, urlsplit

REDACTED = "***"

# Names of settings whose values are secrets. Used for ``key=value`` text and for environment variables.
_SECRET_WORDS = (
    r"password|passwd|passphrase|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key"
    r"|routing[_-]?key|integration[_-]?key|credentials?|session[_-]?key|auth[_-]?key"
)

# scheme://user:password@host -> scheme://user:***@host
_URL_USERINFO = re.compile(r"(?P<prefix>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@'\"]*):(?P<secret>[^\s@/'\"]+)@")
# password=..., "password": "...", PGPASSWORD=..., aws_secret_access_key = ...
# The value ends at whitespace, a quote or a closing bracket, so "(password=x)" keeps its parenthesis; a
# configured password containing one is still caught whole by the literal pass.
_KEY_VALUE = re.compile(
    r"(?P<key>[\w.\-]*(?:" + _SECRET_WORDS + r")[\w.\-]*)(?P<sep>['\"]?\s*[=:]\s*['\"]?)(?P<secret>[^\s'\",;&)}\]]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"\b(?P<scheme>Bearer|Basic)\s+(?P<secret>[^\s'\",;]{6,})", re.IGNORECASE)
_AWS_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_SLACK_TOKEN = re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{8,}")
_SLACK_WEBHOOK = re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_\-]+")

# Environment variables whose values are secrets even though their value has no tell-tale shape.
_SECRET_ENV_NAME = re.compile(r"(?:" + _SECRET_WORDS + r"|DATABASE_URL|WEBHOOK_URL|DSN)", re.IGNORECASE)
_MIN_SECRET_LENGTH = 6  # shorter "secrets" (e.g. a test password "pw") would redact ordinary words


def _key_value(match: re.Match) -> str:
    secret = match.group("secret")
    if secret == REDACTED:
        return match.group(0)
    return f"{match.group('key')}{match.group('sep')}{REDACTED}"


def scrub_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every credential-looking part and every known secret value replaced by ``***``."""
    if not text:
        return text
    # Literal secrets first (longest first, so a password inside a URL is caught as the whole URL).
    for secret in sorted({s for s in secrets if s and len(s) >= _MIN_SECRET_LENGTH}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _SLACK_WEBHOOK.sub(REDACTED, text)
    text = _URL_USERINFO.sub(lambda m: f"{m.group('prefix')}:{REDACTED}@", text)
    text = _BEARER.sub(lambda m: f"{m.group('scheme')} {REDACTED}", text)
    text = _KEY_VALUE.sub(_key_value, text)
    text = _AWS_ACCESS_KEY_ID.sub(REDACTED, text)
    text = _SLACK_TOKEN.sub(REDACTED, text)
    return text


def scrub_payload(value: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings, numbers) with every string scrubbed.

    Dictionary keys are kept; a value under a key that names a secret is replaced whole."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return scrub_text(value, secrets)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if isinstance(key, str) and re.fullmatch(r"[\w.\-]*(?:" + _SECRET_WORDS + r")[\w.\-]*", key, re.I):
                out[key] = REDACTED if item not in (None, "") else item
            else:
                out[key] = scrub_payload(item, secrets)
        return out
    if isinstance(value, (list, tuple)):
        return [scrub_payload(item, secrets) for item in value]
    return value


def secret_values(environ: Mapping[str, str], extra: Iterable[str | None] = ()) -> list[str]:
    """The secret values this process knows: every environment variable whose name says it is a secret
    (``PGPASSWORD``, ``AWS_SECRET_ACCESS_KEY``, ``LOYALTY_PAGERDUTY_ROUTING_KEY``, ``*_TOKEN``,
    ``LOYALTY_DATABASE_URL``, ``LOYALTY_ALERT_WEBHOOK_URL`` ...), the password inside any URL among them,
    and ``extra`` (values read from resources)."""
    found: set[str] = set()
    candidates = [value for name, value in environ.items() if _SECRET_ENV_NAME.search(name)]
    candidates += [value for value in extra if value]
    for value in candidates:
        if not value or len(value) < _MIN_SECRET_LENGTH:
            continue
        found.add(value)
        if "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                found.update({password, unquote(password)})
    return sorted((s for s in found if len(s) >= _MIN_SECRET_LENGTH), key=len, reverse=True)
