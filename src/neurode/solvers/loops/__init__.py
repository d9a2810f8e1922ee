"""The two loops (adaptive, fixed grid) and their shared parts (outputs, events, results)."""
