"""The Slicer layer: the logic on MRML volume nodes, their display, the panel's Qt-free helpers, the install of
the worker's packages, and adapters for the running application. Torch-free; the module file builds on it.
"""
