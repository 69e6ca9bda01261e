"""Pipeline stages: each reads artifacts of a run directory and writes new ones."""
