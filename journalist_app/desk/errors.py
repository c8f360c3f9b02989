"""One error family for the desk: every failure a view maps to a page is a subclass of
``DeskError``."""

from __future__ import annotations


class DeskError(Exception):
    """Base of every error the desk raises on purpose."""


class ConfigError(DeskError):
    """The desk's settings are wrong or unsafe; raised at start-up."""


class GatewayError(DeskError):
    """The gateway answered with an error, or an answer that does not fit its API."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GatewayUnreachable(GatewayError):
    """No answer from the gateway (Tor down, proxy refused, timeout)."""


class Unauthorized(GatewayError):
    """The token is missing, expired or revoked, or the login was refused: log in again."""


class AccountLocked(GatewayError):
    """Too many failed logins: the gateway refuses this account for a while."""


class NotFound(GatewayError):
    """No such case, document, reply or key (or not one of your units')."""


class DocumentsMissing(NotFound):
    """A batch named documents the officer cannot have (``missing``; empty if not said)."""

    def __init__(self, message: str, *, missing: list[int]) -> None:
        super().__init__(message, status=404)
        self.missing = missing


class Rejected(GatewayError):
    """The gateway refused the request's content (e.g. a reply it cannot accept)."""


class CryptoError(DeskError):
    """gpg could not decrypt or encrypt, or a key did not match its pinned fingerprint."""


class NotCached(DeskError):
    """The ciphertext is not in the local cache yet: sync first."""


class ExportError(DeskError):
    """An export could not be written or recorded; nothing was left behind."""
