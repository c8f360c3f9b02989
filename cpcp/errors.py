"""One error family for the core: every failure a caller may map to a page is a subclass."""

from __future__ import annotations


class CPCPError(Exception):
    """Base of every error the core raises on purpose."""


class ConfigError(CPCPError):
    """The settings or the deployment description are wrong; raised at start-up."""


class KeyProblem(ConfigError):
    """An officer or oversight key is missing, expired, revoked or does not match its pin."""


class StoreError(CPCPError):
    """The encrypted store refused an operation (e.g. a path escaping the store)."""


class EncryptionFailed(CPCPError):
    """gpg did not produce a ciphertext; nothing was kept."""


class DecryptionFailed(CPCPError):
    """gpg could not decrypt (wrong key or passphrase, damaged data)."""


class SubmissionRejected(CPCPError):
    """A tip could not be accepted; nothing of it was kept.

    ``reason`` is a stable machine word the apps map to a translated message.
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class UnknownCodename(CPCPError):
    """No source has this codename (or it is malformed)."""


class Throttled(CPCPError):
    """Too many wrong codenames recently; the caller must wait ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after}s")
        self.retry_after = retry_after


class NotFound(CPCPError):
    """The object does not exist or does not belong to the asking source."""


class RateLimited(SubmissionRejected):
    """This codename sent as much as it may in the window; nothing of it was kept."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("rate_limited", status=429)
        self.retry_after = retry_after
