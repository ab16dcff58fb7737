"""The bundled conditional 3D diffusion model (METHOD.md §2): network, sampling and the bundled weights
(``data/ddpm``; docs/DDPM.md and the model card there). Training lives in ``training/``."""
