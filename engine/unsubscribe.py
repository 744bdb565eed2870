"""Signed unsubscribe links: per user and channel, verifiable without any lookup."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from functools import lru_cache
from typing import Any

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
DEV_SECRET = "herald-dev-unsubscribe-secret"


# `base64.urlsafe_b64encode` in one C call plus a translate (the module function adds two
# Python-level calls per use; a link is signed per message sent).
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(secret: str, user_id: str, channel: str) -> str:
    """A token naming (user, channel), signed so nobody can unsubscribe someone else."""
    payload = f"{user_id}\x1f{channel}".encode()
    mac = _hmac_sha256(secret, payload)[:16]
    return f"{_b64(payload)}.{_b64(mac)}"


def _hmac_sha256(secret: str, message: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) from the secret's precomputed inner and outer hash states:
    the same bytes as `hmac.digest`, which costs ~3.5 µs per call in OpenSSL's setup."""
    inner, outer = _keyed(secret)
    inner = inner.copy()
    inner.update(message)
    outer = outer.copy()
    outer.update(inner.digest())
    mac: bytes = outer.digest()
    return mac


@lru_cache(maxsize=16)
def _keyed(secret: str) -> tuple[Any, Any]:
    key = secret.encode()
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


_BLOCK = hashlib.sha256().block_size


def verify_token(secret: str, token: str) -> tuple[str, str] | None:
    """(user_id, channel) when the token is genuine, else None."""
    try:
        payload_text, mac_text = token.split(".", 1)
        payload = _unb64(payload_text)
        expected = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(expected, _unb64(mac_text)):
            return None
        user_id, channel = payload.decode().split("\x1f", 1)
    except (ValueError, UnicodeDecodeError):
        return None
    return user_id, channel


@lru_cache(maxsize=8192)  # a pure function of its arguments; a user often gets several sends
def unsubscribe_url(base_url: str, secret: str, user_id: str, channel: str) -> str:
    """The link templates get as `unsubscribe_url`."""
    return f"{base_url.rstrip('/')}/v1/unsubscribe?token={make_token(secret, user_id, channel)}"
