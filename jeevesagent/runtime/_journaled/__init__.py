"""JournaledRuntime: a facade over the session state, the claim holder, the recorder and the signal
inbox.
"""
