"""The onion package's errors: one family under the core's :class:`cpcp.errors.CPCPError`."""

from __future__ import annotations

from cpcp.errors import CPCPError


class OnionError(CPCPError):
    """Base of every error the onion package raises on purpose."""


class TorNotRunning(OnionError):
    """No tor answers on the control port we were told to use (or the one we started died)."""


class TorFailed(OnionError):
    """tor refused to start, refused a command, or did not get where we waited for in time."""


class BadClientName(OnionError):
    """An officer workstation name that cannot be a file name in ``authorized_clients``."""


class UnknownClient(OnionError):
    """No officer workstation with this name is authorized."""


class UnsafeKeyFile(OnionError):
    """An onion key or client-auth file is readable by others than its owner: refused, not fixed."""
