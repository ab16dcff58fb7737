"""The background worker that the Slicer logic runs a denoise in, and the caller's side of it.

- ``protocol``: the JSON lines the worker prints, and its exit statuses;
- ``process``: start the worker, read its lines, kill its process tree (torch-free);
- ``temp_folders``: each run's folder of input copies, and removing those that crashed runs left;
- ``__main__``: the worker itself, ``python -m PETStabilityDenoiseLib.worker``.
"""
