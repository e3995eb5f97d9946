"""The command line: the inspect, signal and prune commands, the workflow commands (start,
cancel, fork, result, init-schema), store targets, and the crash-and-resume demo.
"""
