"""The journal: the public store-backend contract, the group committer, claim and prune rules, the
in-memory store, and the adapter for five-method stores.
"""
