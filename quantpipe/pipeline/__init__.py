"""Run directories, manifests, locking, atomic writes and the stage runner."""
