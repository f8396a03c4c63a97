"""Import Geneformer's pickled dictionaries without executing code.

Geneformer distributes its token and gene-median dictionaries as pickles. Unpickling can run arbitrary code, so
mixgf reads them with an unpickler that rebuilds only plain containers and numbers and refuses every other
object. Convert such a file once with :func:`read_geneformer_pickle` and keep the JSON/TSV result.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

# numpy scalars are pickled as numpy.core.multiarray.scalar(dtype, bytes); rebuild them without numpy's own
# unpickling (which could be steered to arbitrary dtypes) and accept only these plain dtypes.
_SCALAR_DTYPES = {"i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "b1"}


class _Dtype:
    def __init__(self, code: str, *_: Any) -> None:
        if code not in _SCALAR_DTYPES:
            msg = f"refusing numpy dtype {code!r} in a dictionary pickle"
            raise pickle.UnpicklingError(msg)
        self.code = code

    def __setstate__(self, state: Any) -> None:
        # dtype state: (version, byteorder, ...); only the byte order matters for scalars
        self.byteorder = state[1] if isinstance(state, tuple) and len(state) > 1 else "|"


def _scalar(dtype: _Dtype, data: bytes) -> int | float | bool:
    if not isinstance(dtype, _Dtype) or not isinstance(data, bytes):
        msg = "malformed numpy scalar in a dictionary pickle"
        raise pickle.UnpicklingError(msg)
    order = ">" if getattr(dtype, "byteorder", "<") == ">" else "<"
    value = np.frombuffer(data, dtype=np.dtype(order + dtype.code), count=1)[0]
    return value.item()


_ALLOWED = {
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "dtype"): _Dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            msg = (
                f"refusing to load {module}.{name} from a pickle: only dictionaries of strings and numbers are "
                "accepted. This file is not a Geneformer dictionary or has been tampered with."
            )
            raise pickle.UnpicklingError(msg) from None


def read_geneformer_pickle(path: str | Path) -> dict[str, int | float | str]:
    """Read a Geneformer ``token_dictionary*.pkl`` / ``gene_median_dictionary*.pkl`` safely.

    Only a dict whose keys are strings and whose values are strings, ints or floats (numpy scalars included) is
    accepted; any other object in the pickle, such as a callable that would run code, is refused before it is
    created.

    Parameters
    ----------
    path
        Path of the pickle.

    Returns
    -------
    dict
        The dictionary with plain Python values.

    Raises
    ------
    ValueError
        If the pickle holds anything else.

    Examples
    --------
    >>> import pickle
    >>> import tempfile
    >>> from pathlib import Path
    >>> import mixgf as mgf
    >>> tmp = Path(tempfile.mkdtemp())
    >>> _ = (tmp / "token_dictionary.pkl").write_bytes(pickle.dumps({"<pad>": 0, "<mask>": 1, "ENSG00000111640": 2}))
    >>> mgf.genes.read_geneformer_pickle(tmp / "token_dictionary.pkl")
    {'<pad>': 0, '<mask>': 1, 'ENSG00000111640': 2}

    A pickle that would create any other object (here a function) is refused before anything runs:

    >>> _ = (tmp / "not_a_dictionary.pkl").write_bytes(pickle.dumps({"ENSG00000111640": print}))
    >>> mgf.genes.read_geneformer_pickle(tmp / "not_a_dictionary.pkl")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ...not_a_dictionary.pkl: not a plain Geneformer dictionary pickle (refusing to load builtins.print ...
    """
    raw = Path(path).read_bytes()
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, IndexError) as e:
        msg = f"{path}: not a plain Geneformer dictionary pickle ({e})."
        raise ValueError(msg) from e
    if not isinstance(obj, dict):
        msg = f"{path}: expected a dict, found {type(obj).__name__}."
        raise ValueError(msg)
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, str | int | float) or isinstance(v, bool):
            msg = f"{path}: entry {k!r}: {v!r} is not str -> str/int/float."
            raise ValueError(msg)
    return obj
