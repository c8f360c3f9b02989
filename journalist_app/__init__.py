"""The officer side, in two halves that meet only over HTTP.

- ``gateway``: on the server, behind the officer onion (client authorization), with officer
  login (passphrase + TOTP). Hands out ciphertext and metadata; takes replies that are already
  ciphertext; can decrypt nothing.
- ``desk``: on the officer's hardened workstation, holding the officer's private key (GnuPG,
  smartcard-capable). Syncs ciphertext, decrypts in memory, encrypts replies before they leave.
  It imports nothing of the server (tests/test_desk.py checks).
"""
