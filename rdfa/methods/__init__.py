"""Table 1's aggregation methods, registered by name: the ten of the paper and any a user adds.

A method is a function of one :class:`Image` (a database image, or a query as the pipeline
describes it) registered with :func:`register`::

    from rdfa.methods import register

    @register("MAC2", kind="global")
    def mac2(image):
        return image.fmap.max(axis=(0, 1))

The methods stage (``stages/methods.py``) imports the built-in ones below, then every
``plugins/*.py`` (:func:`load_plugins`), and treats them all alike
(:mod:`rdfa.methods.table1`): each output l2-normalised (row by row), PCA-whitened at each D of
``methods.D`` (and each mode of ``methods.compare_whitening``), searched without and with query
expansion, queries cropped and uncropped (``<name>_full``), scored, plotted. The ``kind`` says how:

* ``"global"``: one vector ``(dim,)`` per image; searched by dot product, average QE;
* ``"regional"``: ``(n_regions, dim)`` rows per image, the whole image last; compared by eq. 7
  (best region pair), region QE (eq. 8);
* ``"rmac"``: ``(n_regions, dim)`` rows whitened one by one, then summed into one vector and
  l2-normalised (R-MAC's way); searched as ``"global"``.

What a method may use beyond the map is declared: ``needs=("basis",)`` fills
``image.basis`` (the dataset's K -> K' PCA basis, ``pca.h5``); ``stored="descriptors"`` makes
it a method of the descriptors stage's rows (eq. 5, ``descriptors.h5``): ``image.descriptors``
holds that entry's rows (whole image last) and the map is not read. ``pipeline=True`` says the
method searches the very rows the whitening and ranking stages use (O2_R): the whitening
stage's fit is reused when it is the fit this stage would make, and its ranks at
``whitening.D`` are checked against the ranking stage's.
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np

#: How a method's output is searched (see the module's text).
KINDS = ("global", "regional", "rmac")
#: What a method may declare in ``needs``.
NEEDS = ("basis",)
#: The stored outputs a method may be computed from (``stored=``).
STORED = ("descriptors",)


class MethodError(ValueError):
    """A method registered wrongly (unknown kind, a name taken) or a plugin file that fails."""


@dataclass(frozen=True)
class MethodSettings:
    """The settings the built-in methods read (``methods.*`` and ``weights.beta_eps`` of params.yaml)."""

    gem_p: float = 3.0
    crow_a: float = 2.0
    crow_b: float = 2.0
    rmac_levels: int = 3
    rmac_overlap: float = 0.4
    beta_eps: float = 1e-6


class Image:
    """What a method function receives for one image or query.

    ``fmap``: the stored feature map as float32 ``(h, w, K)``; ``fmap64`` the same in float64.
    ``masks``: the regions it is described by, boolean ``(M, h, w)`` on the map's grid, the
    whole image last (a query with a box: one region, its cropped map). ``alpha`` (eq. 1,
    ``(h, w)``) and ``beta`` (eq. 2, ``(K,)``) are computed when first read. ``basis``: the
    K -> K' basis, ``(K, K')``, for a method that declares ``needs=("basis",)``.
    ``descriptors``: the entry's rows of descriptors.h5 for a method with
    ``stored="descriptors"`` (such a method gets no map). ``settings``: :class:`MethodSettings`.
    ``key``: the entry (``db/<name>``, ``query/<i>``, ``full/<i>``). :meth:`shared` keeps a step
    that several methods need.
    """

    def __init__(self, key: str, fmap: np.ndarray | None = None, masks: np.ndarray | None = None,
                 settings: MethodSettings = MethodSettings(), basis: np.ndarray | None = None,
                 descriptors: np.ndarray | None = None):
        self.key, self.settings, self.basis, self.descriptors = key, settings, basis, descriptors
        self._stored, self.masks = fmap, masks
        self._shared: dict = {}

    def shared(self, name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """``compute()``, once per image: methods that share a step (R-MAC and R-MAC+G's region
        maxima, O1_W and O1_R's eq. 9) compute it once under the same ``name``."""
        if name not in self._shared:
            self._shared[name] = compute()
        return self._shared[name]

    @cached_property
    def fmap(self) -> np.ndarray:
        if self._stored is None:
            raise MethodError(f"{self.key}: no feature map here (a method with stored= gets that output's rows)")
        stored = np.asarray(self._stored)
        # float16 -> float64 -> float32 is exact, and twice as fast as numpy's float16 -> float32
        return stored if stored.dtype == np.float32 else self.fmap64.astype(np.float32)

    @cached_property
    def fmap64(self) -> np.ndarray:
        if self._stored is None:
            return self.fmap  # (raises)
        return np.asarray(self._stored, dtype=np.float64)

    @cached_property
    def channel_sums(self) -> np.ndarray:
        from ..weights import channel_sums

        return channel_sums(self.fmap64)

    @cached_property
    def alpha(self) -> np.ndarray:
        from ..weights import spatial_weights

        return spatial_weights(self.fmap64, self.channel_sums)

    @cached_property
    def beta(self) -> np.ndarray:
        from ..weights import channel_weights

        return channel_weights(self.fmap, self.settings.beta_eps)


@dataclass(frozen=True)
class Method:
    """A registered method: its name, kind, function and what it reads beyond the map."""

    name: str
    kind: str
    fn: Callable[[Image], np.ndarray]
    needs: tuple[str, ...] = ()
    stored: str | None = None
    pipeline: bool = False
    source: str = ""  # the module or file that registered it


_METHODS: dict[str, Method] = {}


def register(name: str, kind: str, *, needs: tuple[str, ...] | list[str] = (), stored: str | None = None,
             pipeline: bool = False):
    """Register the decorated function as method ``name`` of ``kind`` (:data:`KINDS`); returns it unchanged."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise MethodError(f"a method name must be a non-empty string without surrounding spaces (got {name!r})")
    if kind not in KINDS:
        raise MethodError(f"method {name!r}: kind must be one of {', '.join(KINDS)} (got {kind!r})")
    needs = tuple(needs)
    unknown = [n for n in needs if n not in NEEDS]
    if unknown:
        raise MethodError(f"method {name!r}: unknown needs {unknown} (known: {', '.join(NEEDS)})")
    if stored is not None and stored not in STORED:
        raise MethodError(f"method {name!r}: stored must be one of {', '.join(STORED)} or None (got {stored!r})")
    if pipeline and (stored != "descriptors" or kind != "regional"):
        raise MethodError(f"method {name!r}: pipeline=True is for the regional method of the descriptors "
                          "stage's rows (stored='descriptors', kind='regional')")

    def decorate(fn):
        source = getattr(fn, "__module__", "") or ""
        if name in _METHODS:
            raise MethodError(f"method {name!r} is registered already (by {_METHODS[name].source})")
        _METHODS[name] = Method(name, kind, fn, needs, stored, pipeline, source)
        return fn

    return decorate


def names() -> list[str]:
    """The registered methods' names in registration order: Table 1's ten first, then the plugins'."""
    return list(_METHODS)


def get(name: str) -> Method:
    if name not in _METHODS:
        raise MethodError(f"no method named {name!r} (registered: {', '.join(_METHODS)})")
    return _METHODS[name]


def select(wanted, key: str = "methods.distractor_methods") -> list[Method]:
    """The registered methods named in ``wanted`` (params.yaml's ``key``), in that order; an unknown name
    raises :class:`MethodError` naming the key, with the nearest registered name."""
    import difflib

    out = []
    for name in wanted:
        if name not in _METHODS:
            near = difflib.get_close_matches(name, list(_METHODS), n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise MethodError(f"params.yaml: '{key}' names {name!r}, which no method is registered as{hint} "
                              f"(registered: {', '.join(_METHODS)}; a plugin's method: plugins/*.py)")
        out.append(_METHODS[name])
    return out


def methods() -> list[Method]:
    """Every registered :class:`Method`, in registration order."""
    return list(_METHODS.values())


def load_plugins(folder: str | Path) -> list[str]:
    """Import every ``*.py`` of ``folder`` (sorted by name); returns the names they registered.

    A file that fails to import, or registers a name already taken, raises :class:`MethodError`
    naming it. A missing folder registers nothing; a file this process imported already is not
    imported again.
    """
    folder = Path(folder)
    before = set(_METHODS)
    for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
        module = f"rdfa_plugins.{path.stem}"
        if getattr(sys.modules.get(module), "__file__", None) == str(path):
            continue  # imported already by this process
        spec = importlib.util.spec_from_file_location(module, path)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[module] = loaded
        try:
            spec.loader.exec_module(loaded)
        except MethodError as err:
            del sys.modules[module]
            raise MethodError(f"{path}: {err}") from None
        except Exception as err:
            del sys.modules[module]
            raise MethodError(f"{path}: the plugin failed to import: {type(err).__name__}: {err}") from err
        for name, method in _METHODS.items():
            if name not in before and method.source == module:
                _METHODS[name] = Method(name, method.kind, method.fn, method.needs, method.stored, method.pipeline,
                                        str(path))
    return [name for name in _METHODS if name not in before]


from . import builtin  # noqa: E402,F401  (Table 1's ten, registered in its order through register)
