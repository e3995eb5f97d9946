"""The Temporal adapter (extra ``[temporal]``): ``TemporalRuntime`` and its journal store. Only
imported when ``jeevesagent.runtime.TemporalRuntime`` is first used."""
