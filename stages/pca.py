#!/usr/bin/env python3
"""Stage `pca`: PCA bases U1 (K to K') of the database's first-order region descriptors (eqs. 3, 4).

Each region R'_m of each database image gives ``beta o sum_{p in R'_m} f_p``,
l2-normalised (eq. 3); their principal axes reduce the local descriptors to
K' dimensions for second-order pooling (eq. 4). Writes ``pca.h5``.
"""
from __future__ import annotations

import logging
import sys

import h5py
import numpy as np
from tqdm import tqdm

from rdfa.io.gnd import load_gnd
from rdfa.io.params import get_float, get_int
from rdfa.io.stage import h5_output, run_stage
from rdfa.pooling import first_order
from rdfa.weights import channel_weights
from rdfa.whitening import StreamingPCA

log = logging.getLogger("rdfa.pca")


def main(dataset: str, params: dict, paths) -> None:
    k_prime = get_int(params, "pca.k_prime", 1)
    beta_eps = get_float(params, "weights.beta_eps", positive=True)
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


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0], outputs=lambda p: [p.pca]))
