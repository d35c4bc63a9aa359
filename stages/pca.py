#!/usr/bin/env python3
"""Stage `pca`: PCA bases U1 (K to K') of the database's first-order region descriptors (eqs. 3, 4).

Each region R'_m of each database image gives ``beta o sum_{p in R'_m} f_p``,
l2-normalised (eq. 3); their principal axes reduce the local descriptors to
K' dimensions for second-order pooling (eq. 4). Writes ``pca.h5``.

With ``whitening.train_on.<dataset>: <other>``, everything learned comes from
the other dataset: its basis is copied (``learned_on``, and its digest in
``source_digest``), so that this dataset's second-order descriptors share
the space the other's whitening is learned in.
"""
from __future__ import annotations

import logging
import sys

import h5py
import numpy as np
from tqdm import tqdm

from rdfa.io.gnd import load_gnd
from rdfa.io.params import get_float, get_int, training_dataset
from rdfa.io.provenance import array_digest
from rdfa.io.stage import Paths, h5_output, run_stage
from rdfa.pooling import first_order
from rdfa.weights import channel_weights
from rdfa.whitening import StreamingPCA

log = logging.getLogger("rdfa.pca")


def copy_basis(dataset: str, source: str, k_prime: int, paths) -> None:
    """The K -> K' basis of ``source`` (its own ``pca.h5``), as ``dataset``'s."""
    origin = Paths(paths.data.parent.parent, source).pca
    if not origin.is_file():
        raise ValueError(f"whitening.train_on.{dataset}={source}: {origin} not found "
                         f"(run the pipeline on {source} first: it must be in 'datasets')")
    with h5py.File(origin, "r") as f:
        if str(f.attrs.get("learned_on", source)) != source:
            raise ValueError(f"{origin}: {source}'s basis was itself learned on {f.attrs['learned_on']}; "
                             "re-run its pca stage")
        basis = {name: f[name][()] for name in ("components", "mean", "eigenvalues")}
        n_train = int(f.attrs["n_train"])
    if basis["components"].shape[1] != k_prime:
        raise ValueError(f"{origin}: {source}'s basis has K'={basis['components'].shape[1]}, pca.k_prime is "
                         f"{k_prime}: re-run the pipeline on {source}")
    log.info("K -> K' basis of %s (%s), learned on %d of its region descriptors", source, origin, n_train)
    with h5_output(paths.pca) as out:
        for name, value in basis.items():
            out.create_dataset(name, data=value)
        out.attrs["n_train"] = n_train
        out.attrs["learned_on"] = source
        out.attrs["source_digest"] = array_digest(basis["components"])


def main(dataset: str, params: dict, paths) -> None:
    k_prime = get_int(params, "pca.k_prime", 1)
    beta_eps = get_float(params, "weights.beta_eps", positive=True)
    source = training_dataset(params, dataset)
    if source != dataset:
        return copy_basis(dataset, source, k_prime, paths)
    gnd = load_gnd(paths.data)
    fitter = None
    with h5py.File(paths.features, "r") as feats, h5py.File(paths.regions, "r") as regs:
        for name in tqdm(gnd["imlist"], desc=f"pca {dataset}", unit="img"):
            fmap = feats[f"db/{name}"]["fmap"][()].astype(np.float64)
            masks = regs[f"db/{name}"]["masks"][()]
            rows = first_order(fmap, masks, channel_weights(fmap, beta_eps))
            # Accumulated as they come: memory stays at K x K however large the database.
            fitter = fitter or StreamingPCA(rows.shape[1])
            fitter.add(rows)
    log.info("fitting PCA %d -> %d on %d first-order region descriptors", fitter.dim, k_prime, fitter.n)
    pca = fitter.fit(k_prime, name="pca.k_prime")
    kept = pca.eigenvalues.sum() / max(pca.total_variance, 1e-300)
    log.info("the %d axes keep %.1f%% of the variance", k_prime, 100 * kept)
    with h5_output(paths.pca) as out:
        out.create_dataset("components", data=pca.components)
        out.create_dataset("mean", data=pca.mean)
        out.create_dataset("eigenvalues", data=pca.eigenvalues)
        out.attrs["n_train"] = fitter.n
        out.attrs["learned_on"] = dataset


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0], outputs=lambda p: [p.pca]))
