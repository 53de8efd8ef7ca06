"""Keyed hashes and sealed secrets, all derived from the one server secret key."""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken

from core.platform.settings import Settings


class Keyring:
    """Derives purpose-bound keys from GATEWAY_SECRET_KEY."""

    def __init__(self, settings: Settings) -> None:
        self._root = settings.secret_key.get_secret_value().encode("utf-8")
        self._fernet = Fernet(base64.urlsafe_b64encode(self._derive(b"seal")))

    def __repr__(self) -> str:
        return "Keyring(<secret>)"

    def _derive(self, purpose: bytes) -> bytes:
        return hmac.new(self._root, b"eirc-gateway:" + purpose, hashlib.sha256).digest()

    def keyed_hash(self, purpose: str, value: str) -> str:
        """An HMAC-SHA256 of a value under a purpose-bound key, as hex."""
        key = self._derive(purpose.encode("utf-8"))
        return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()

    def reference(self, value: str) -> str:
        """A short, stable pseudonym for logs and audit (account numbers, phone numbers)."""
        return self.keyed_hash("reference", value)[:16]

    def seal(self, secret: str) -> str:
        """Encrypt a secret that must be spoken again within one call."""
        return self._fernet.encrypt(secret.encode("utf-8")).decode("ascii")

    def unseal(self, token: str) -> str | None:
        """Decrypt a sealed secret; None when it was tampered with or the key changed."""
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, ValueError):
            return None
