"""CPCP shared core: settings, database, encrypted store, OpenPGP, codenames and i18n.

The core knows no request and no template; both server apps import it, it imports neither.
"""
