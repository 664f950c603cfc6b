"""The study's common ground, shared by every part: how a model is loaded, scored and timed.

cli.py (one clean line for a user's mistake, outputs checked first), config.py (every default,
once), loading.py, text.py, perplexity.py, memory.py and timing.py (the measurements that
evaluate.py hands to every script).
"""
