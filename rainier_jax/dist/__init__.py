"""Processes: which process of how many, host and global arrays, signals, and the local launcher."""
