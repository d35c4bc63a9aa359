"""File I/O for the DVC stages: atomic writes, images, datasets, HDF5, params."""
