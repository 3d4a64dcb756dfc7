"""Sweeps: grid specs over any config keys, batched groups, resumable results, executors."""
