"""Desktop notifications through the desktop's notification service (freedesktop
``org.freedesktop.Notifications.Notify`` on the session D-Bus, with jeepney).

A notification names only a unit and a count: it shows on a screen others may see and may be
kept in the desktop's history, so nothing of a tip's content ever goes into it.
"""

from __future__ import annotations

import gettext
import logging
from typing import Protocol

from jeepney import DBusAddress, MessageType, new_method_call  # type: ignore[import-untyped]
from jeepney.io.asyncio import open_dbus_router  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

NOTIFICATIONS = DBusAddress("/org/freedesktop/Notifications", bus_name="org.freedesktop.Notifications",
                            interface="org.freedesktop.Notifications")
APP_NAME = "CPCP desk"
EXPIRE_MS = 10_000


def message_for(unit_name: str, count: int,
                translations: gettext.NullTranslations | None = None) -> tuple[str, str]:
    """Summary and body in the desk's language: the unit and the count, nothing else."""
    t = translations or gettext.NullTranslations()
    summary = t.ngettext("CPCP: %(num)d new tip for %(unit)s", "CPCP: %(num)d new tips for %(unit)s", count)
    return summary % {"num": count, "unit": unit_name}, t.gettext("Open the desk's inbox to read.")


class Notifier(Protocol):
    async def notify(self, unit_name: str, count: int) -> None: ...


class NoNotifier:
    """Desktop notifications switched off (``desktop_notifications = false``)."""

    async def notify(self, unit_name: str, count: int) -> None:
        return None


class DesktopNotifier:
    """Sends each notification over a fresh connection (they are rare; nothing is held open).
    A missing bus or service is logged once and never raised: it must not stop a sync."""

    def __init__(self, bus_address: str | None,
                 translations: gettext.NullTranslations | None = None) -> None:
        self._bus = bus_address
        self._translations = translations
        self._warned = False
        self.sent = 0

    async def notify(self, unit_name: str, count: int) -> None:
        if not self._bus:
            self._warn("no session bus (DBUS_SESSION_BUS_ADDRESS is not set)")
            return
        summary, body = message_for(unit_name, count, self._translations)
        call = new_method_call(NOTIFICATIONS, "Notify", "susssasa{sv}i",
                               (APP_NAME, 0, "", summary, body, [], {}, EXPIRE_MS))
        try:
            async with open_dbus_router(self._bus) as router:
                reply = await router.send_and_get_reply(call)
        except (OSError, EOFError, ValueError, KeyError, RuntimeError) as exc:
            self._warn(f"cannot reach the session bus ({type(exc).__name__})")
            return
        if reply.header.message_type == MessageType.error:
            self._warn(f"the notification service refused ({reply.header.fields.get(4, 'error')})")
            return
        self.sent += 1

    def _warn(self, why: str) -> None:
        if not self._warned:
            log.warning("desktop notifications unavailable: %s", why)
            self._warned = True
