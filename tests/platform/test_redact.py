"""detflow.redact: the one redaction rule, and every former entry point using it."""
from __future__ import annotations

from detflow import redact as R


def test_url_credentials_anywhere_in_text():
    assert R.redact_url("postgresql://user:pw@db:5432/x") == "postgresql://***@db:5432/x"
    assert R.redact_text("failed: mysql+pymysql://a:b@h/db and s3://bkt/k", env={}) == \
        "failed: mysql+pymysql://***@h/db and s3://bkt/k"


def test_key_value_pairs_and_signatures():
    text = "token=abc123 password: 'hunter22' X-Amz-Signature=deadbeef epochs=3"
    assert R.redact_text(text, env={}) == "token=*** password: '***' X-Amz-Signature=*** epochs=3"


def test_secret_env_values_are_replaced_short_ones_are_not():
    env = {"AWS_SECRET_ACCESS_KEY": "s3cr3tvalue", "AWS_ACCESS_KEY_ID": "abc"}
    assert R.redact_text("boto said s3cr3tvalue for abc", env=env) == "boto said *** for abc"


def test_nested_mappings_and_lists():
    value = {"db": {"url": "postgresql://u:p@h/x", "password": "p", "empty_token": ""},
             "steps": [{"api_key": "k", "epochs": 3}, ("a://u:v@h",)], "cache_key": "keep", "n": None}
    assert R.redact(value, env={}) == {
        "db": {"url": "postgresql://***@h/x", "password": "***", "empty_token": ""},
        "steps": [{"api_key": "***", "epochs": 3}, ["a://***@h"]], "cache_key": "keep", "n": None}


def test_non_strings_pass_through():
    assert R.redact(3.5) == 3.5 and R.redact(None) is None and R.redact(True) is True


def test_strip_credentials_keeps_user_drops_password_and_secret_params():
    assert R.strip_credentials("postgresql+psycopg://ci:pw@db:5432/state") == "postgresql+psycopg://ci@db:5432/state"
    assert R.strip_credentials("https://h/o?X-Amz-Signature=x&part=1") == "https://h/o?part=1"


def test_former_entry_points_are_the_same_rule():
    from detflow import storage, tracking
    from detflow.tracking import store
    from detflow.workflows import lineage

    assert storage.redact is R.redact_text
    assert tracking.redact is R.redact and lineage.redacted is R.redact
    assert store.redact_url is R.redact_url and storage.strip_credentials is R.strip_credentials
    # lineage's redacted used to chain the tree rule and the text rule: one call does both now
    assert lineage.redacted({"e": "token=abc at s3://u:p@h"}) == {"e": "token=*** at s3://***@h"}
