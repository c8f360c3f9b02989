"""Composing a reply at the desk: encrypted here, to the source's reply key and every officer
of the case's unit, with keys whose fingerprints the gateway pins; only ciphertext leaves."""

from __future__ import annotations

import asyncio

from .cache import Cache
from .client import GatewayClient
from .crypto import DeskCrypto
from .errors import CryptoError
from .wire import Case


async def recipients(client: GatewayClient, crypto: DeskCrypto, cache: Cache, case: Case) -> list[str]:
    """Fetch (if not known yet) and import the pinned keys; return their fingerprints, the
    source's first."""
    units = await client.units()
    await cache.store_units(units)
    unit = next((u for u in units if u.slug == case.unit), None)
    if unit is None or not unit.officers:
        raise CryptoError(f"no officer keys for unit {case.unit}: the reply could not be read by the unit")
    source = await client.source_key(case.id)
    await asyncio.to_thread(crypto.import_pinned, source.armored, source.fingerprint)
    officers = []
    for officer in unit.officers:
        if not await asyncio.to_thread(crypto.has_public_key, officer.fingerprint):
            key = await client.officer_key(officer.fingerprint)
            if key.fingerprint != officer.fingerprint:
                raise CryptoError(f"the gateway sent key {key.fingerprint} for {officer.fingerprint}")
            await asyncio.to_thread(crypto.import_pinned, key.armored, officer.fingerprint)
        officers.append(officer.fingerprint)
    return [source.fingerprint, *officers]


async def send_reply(client: GatewayClient, crypto: DeskCrypto, cache: Cache, case: Case, text: str) -> int:
    """Encrypt ``text`` at the desk, upload the ciphertext, refresh the case; the reply id."""
    to = await recipients(client, crypto, cache, case)
    armored = await asyncio.to_thread(crypto.encrypt_reply, text, to)
    reply_id = await client.post_reply(case.id, armored)
    await cache.refresh_case(client, case.id)
    return reply_id
