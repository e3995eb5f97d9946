"""The runtime core: session state and contexts, the base runtime, stream steps, journal keys,
fingerprints, codecs and signing, names, observability. Knows no store.
"""
