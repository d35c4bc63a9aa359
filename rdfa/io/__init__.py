"""File I/O for the DVC stages: atomic writes, images, datasets, HDF5, params."""

try:
    # Registers the HDF5 filters of hdf5plugin: features.h5 stores its maps with Zstandard.
    import hdf5plugin  # noqa: F401
except ImportError:  # bench/gpu.py on a bare GPU machine reads no HDF5 file; anywhere else it is installed
    hdf5plugin = None

#: How ``features.h5`` stores each map (one chunk per map): Zstandard level 1 (hdf5plugin).
#: Measured on 400 COIL-100 maps (16x16x1280 float16, 92 % ReLU zeros; ``bench/kernels.py
#: compression``): 11.9x smaller, read back in 0.57 ms per map; gzip level 1: 9.1x, 1.19 ms;
#: lzf 1.68 ms; blosc-lz4 5.1x, 0.50 ms. Every per-image stage reads every map, so read speed
#: counts five times per run.


def map_compression() -> dict:
    """The ``create_dataset`` keywords of a stored feature map."""
    if hdf5plugin is None:
        raise RuntimeError("hdf5plugin is not installed (pip install -r requirements.txt): features.h5 "
                           "stores its maps with its Zstandard filter")
    return dict(hdf5plugin.Zstd(clevel=1))
