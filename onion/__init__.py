"""Tor through stem, in one place: CPCP's onion services, client authorization, a private test
network.

- :mod:`onion.tor`: start the deployment's own tor or attach to one (cookie auth); the
  :class:`~onion.tor.TorControl` Protocol everything else uses.
- :mod:`onion.services`: the source onion and the officer onion (v3 client authorization),
  with tor's onion-service DoS defences where the tor supports them.
- :mod:`onion.clients`: officer workstations' x25519 client keys.
- :mod:`onion.testnet`: a private Tor network on 127.0.0.1 for end-to-end tests.
- :mod:`onion.cli`: ``cpcp-onion`` (``python -m onion.cli``).
"""
