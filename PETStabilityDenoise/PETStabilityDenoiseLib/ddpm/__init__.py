"""The bundled conditional 3D diffusion model (METHOD.md §2): network, sampling and weights.

Work in progress (issue 5): training and the bundled weights are not there yet.
"""
