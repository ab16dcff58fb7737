"""Volumes: reading and writing images, validating them, their geometry, and the run folder's layout. Torch-free."""
