"""The officer side: the gateway (server) and the desk (officer workstation).

Not built yet: the officer-side issue builds it. Until then replies and status changes are
made through the core (cpcp.cases.Cases), as the tests do.
"""
