"""The command line: the inspect, signal and prune commands, store targets, and the crash-and-
resume demo.
"""
