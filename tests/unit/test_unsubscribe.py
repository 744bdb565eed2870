"""Unsubscribe tokens: the signature scheme must not change (links already sent must verify)."""

from __future__ import annotations

import base64
import hashlib
import hmac

from engine.unsubscribe import _hmac_sha256, make_token, unsubscribe_url, verify_token


def _reference_token(secret: str, user_id: str, channel: str) -> str:
    payload = f"{user_id}\x1f{channel}".encode()
    mac = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:16]
    b64 = [base64.urlsafe_b64encode(p).rstrip(b"=").decode() for p in (payload, mac)]
    return ".".join(b64)


def test_token_is_the_documented_signature() -> None:
    for user_id, channel in [("u1", "email"), ("李伟", "wechat"), ("", "sms")]:
        token = make_token("s3cret", user_id, channel)
        assert token == _reference_token("s3cret", user_id, channel)
        assert verify_token("s3cret", token) == (user_id, channel)
        assert verify_token("other", token) is None


def test_url() -> None:
    url = unsubscribe_url("https://h.example/", "s", "u1", "email")
    assert url == f"https://h.example/v1/unsubscribe?token={_reference_token('s', 'u1', 'email')}"


def test_hmac_matches_the_standard_library_for_every_key_length() -> None:
    for secret in ["", "s", "herald-dev-unsubscribe-secret", "x" * 64, "y" * 65, "z" * 300, "秘密"]:
        for message in [b"", b"u1\x1femail", bytes(range(256))]:
            assert _hmac_sha256(secret, message) == hmac.digest(secret.encode(), message, "sha256")
