"""Sealed identities at the desk: a custodian completes an approved disclosure here, and the
requesting officer reads it here. Only here is a source's contact detail ever in clear, in
memory, never on disk.

Threat answered: the server (or anyone holding its disk) learning who a source is. The
custodian's desk decrypts the sealed object with the custodian's own key and encrypts it to the
requester's key, whose fingerprint the gateway pins and the key block must match exactly
(DeskCrypto.import_pinned); the gateway accepts the upload only if the recipients fit.
"""

from __future__ import annotations

import asyncio
import json

from .client import GatewayClient
from .crypto import DeskCrypto
from .errors import CryptoError
from .wire import Disclosure


async def approve_and_disclose(client: GatewayClient, crypto: DeskCrypto, request: Disclosure) -> Disclosure:
    """Approve a pending request (an approved one whose upload failed is simply completed),
    re-encrypt the sealed details to the requester, upload."""
    request_id = request.id
    approved = await client.decide_disclosure(request_id, approve=True) if request.status == "pending" else request
    sealed = await client.sealed_identity(request_id)
    plaintext = await asyncio.to_thread(crypto.decrypt, sealed)
    fingerprint = approved.requester.fingerprint
    try:
        if not await asyncio.to_thread(crypto.has_public_key, fingerprint):
            key = await client.officer_key(fingerprint)
            if key.fingerprint != fingerprint:
                raise CryptoError(f"the gateway sent key {key.fingerprint} for {fingerprint}")
            await asyncio.to_thread(crypto.import_pinned, key.armored, fingerprint)
        armored = await asyncio.to_thread(crypto.encrypt_bytes, plaintext, [fingerprint])
    finally:
        del plaintext
    return await client.upload_disclosure(request_id, armored)


async def read_disclosure(client: GatewayClient, crypto: DeskCrypto, request_id: int) -> str:
    """The disclosed contact details, decrypted in memory with this desk's key."""
    data = await asyncio.to_thread(crypto.decrypt, await client.disclosure(request_id))
    try:
        body = json.loads(data.decode("utf-8"))
        return str(body["contact"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CryptoError("the disclosed details are not the expected document") from exc
