"""Tor through stem: onion services, client authorization, a private test network.

Not built yet: the Tor issue builds it. Until then the source app listens on 127.0.0.1 only.
"""
