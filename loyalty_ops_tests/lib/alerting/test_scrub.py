"""Secrets never leave in a page: patterns and known values are scrubbed from every string."""

import string

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from loyalty_ops.lib.alerting.scrub import REDACTED, scrub_payload, scrub_text, secret_values


def test_url_credentials_are_redacted_but_the_rest_of_the_url_stays():
    text = "could not connect to postgresql://loyalty:Hunter2Pw@db.internal:5432/loyalty?sslmode=require"
    assert scrub_text(text) == "could not connect to postgresql://loyalty:***@db.internal:5432/loyalty?sslmode=require"


def test_key_value_pairs_that_name_a_secret_are_redacted():
    assert scrub_text("host=db password=Hunter2Pw user=loyalty") == "host=db password=*** user=loyalty"
    assert scrub_text("PGPASSWORD=Hunter2Pw pg_dump -Fc") == "PGPASSWORD=*** pg_dump -Fc"
    assert scrub_text('{"aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG"}') == '{"aws_secret_access_key": "***"}'
    assert scrub_text("api_key: abcdef123456, next") == "api_key: ***, next"
    assert scrub_text("GET /hook?token=abcdef123456&x=1") == "GET /hook?token=***&x=1"


def test_tokens_with_a_recognisable_shape_are_redacted():
    assert scrub_text("Authorization: Bearer abc.def-ghi_123456") == "Authorization: Bearer ***"
    assert scrub_text("key AKIAIOSFODNN7EXAMPLE used") == "key *** used"
    assert scrub_text("token xoxb-1234-5678-abcdefgh was revoked") == "token *** was revoked"
    assert scrub_text("posted to https://hooks.slack.com/services/T000/B000/XXXXXXXX ok") == "posted to *** ok"


def test_known_secret_values_are_redacted_anywhere():
    secret = "s3cr3t-value-42"
    assert scrub_text(f"prefix{secret}suffix and {secret}", [secret]) == "prefix***suffix and ***"
    # too short to be told apart from ordinary words: left alone
    assert scrub_text("the pw is ok", ["pw"]) == "the pw is ok"


def test_ordinary_text_is_untouched():
    text = "nightly_backup_job failed on loyalty at step database_backup: pg_dump exited with 1 (see http://localhost:3000/runs/abc)"
    assert scrub_text(text) == text


def test_payload_scrubbing_is_recursive_and_replaces_values_under_secret_keys():
    payload = {
        "summary": "failed: postgresql://u:Hunter2Pw@h/db",
        "details": {"password": "Hunter2Pw", "items": ["PGPASSWORD=Hunter2Pw", 3, None], "routing_key": "abc"},
        "count": 2,
    }
    assert scrub_payload(payload) == {
        "summary": "failed: postgresql://u:***@h/db",
        "details": {"password": REDACTED, "items": ["PGPASSWORD=***", 3, None], "routing_key": REDACTED},
        "count": 2,
    }


def test_secret_values_from_environment_include_passwords_inside_urls():
    environ = {
        "PGPASSWORD": "pg-password-1",
        "LOYALTY_DATABASE_URL": "postgresql://loyalty:url%2Fpassword@db/loyalty",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-1",
        "LOYALTY_SLACK_TOKEN": "xoxb-slack-1",
        "PGHOST": "db.internal",
        "SHORT_TOKEN": "abc",
    }
    found = secret_values(environ, ["routing-key-123", None])
    assert {"pg-password-1", "aws-secret-1", "xoxb-slack-1", "routing-key-123", "url%2Fpassword", "url/password"} <= set(found)
    assert "db.internal" not in found and "abc" not in found


_password = st.text(alphabet=string.ascii_letters + string.digits + "!#$%^*()-_+~[]{}", min_size=8, max_size=30)


@settings(max_examples=60, deadline=None)
@given(password=_password)
def test_no_password_survives_in_any_usual_form(password):
    templates = [
        "postgresql://loyalty:{}@db:5432/loyalty",
        "password={}",
        "(PGPASSWORD={}) pg_dump",
        '{{"password": "{}"}}',
        "Authorization: Bearer {}",
    ]
    # a "password" that is a word of the surrounding text itself ("password", "postgresql") is not a test
    assume(not any(password.lower() in t.lower() for t in templates))
    for template in templates:
        text = template.format(password)
        # a configured secret is removed whole wherever it appears
        assert scrub_text(text, [password]) == template.format(REDACTED)
        # an unknown one by its shape alone, when it has no closing bracket to end the value early
        if not set(password) & set(")]}"):
            assert scrub_text(text) == template.format(REDACTED), text
    scrubbed = scrub_payload({"a": [{"b": f"x {password} y"}]}, [password])
    assert scrubbed == {"a": [{"b": f"x {REDACTED} y"}]}
