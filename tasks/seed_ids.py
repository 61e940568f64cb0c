"""A compact, exact set of problem ids for deduplicating seeds at scale.

``ProblemIdSet`` holds ids made by ``infra.schemas.stable_id`` (20 hex digits, 80 bits) in
two sorted numpy arrays, the high 64 bits and the low 16 bits: 10 bytes per id (10 MB
for a million seeds; a Python set of the id strings takes about 100 MB). It is used a
batch at a time: ``contains(ids)`` for a batch, then ``add(ids)`` for the batch's new,
distinct ids (one merge per batch: a stable radix sort of the concatenation). Membership
is exact: two ids with the same high bits are told apart by their low bits.
"""

from __future__ import annotations

import numpy as np

ID_HEX = 20  # stable_id's length: 16 hex digits of high bits, 4 of low bits
_RECORD = np.dtype([("hi", ">u8"), ("lo", ">u2")])  # an id's 10 bytes as written


class IdFormatError(ValueError):
    """An id that is not ``ID_HEX`` hex digits."""


def _split(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    if any(len(i) != ID_HEX for i in ids):
        raise IdFormatError(f"problem ids must be {ID_HEX} hex digits")
    try:
        rec = np.frombuffer(bytes.fromhex("".join(ids)), dtype=_RECORD)
    except ValueError as e:
        raise IdFormatError(f"problem ids must be {ID_HEX} hex digits: {e}") from None
    return rec["hi"].astype(np.uint64), rec["lo"].astype(np.uint16)


class ProblemIdSet:
    """An exact set of ``ID_HEX``-digit hex ids, 10 bytes each."""

    def __init__(self) -> None:
        self._hi = np.empty(0, np.uint64)
        self._lo = np.empty(0, np.uint16)

    def __len__(self) -> int:
        return len(self._hi)

    @property
    def nbytes(self) -> int:
        return self._hi.nbytes + self._lo.nbytes

    def contains(self, ids: list[str]) -> np.ndarray:
        """One bool per id: whether it is in the set."""
        out = np.zeros(len(ids), bool)
        if not ids or not len(self._hi):
            return out
        hi, lo = _split(ids)
        left, right = np.searchsorted(self._hi, hi, "left"), np.searchsorted(self._hi, hi, "right")
        for i in np.nonzero(right > left)[0]:  # equal high bits: a duplicate, or (rarely) a 64-bit clash
            out[i] = bool((self._lo[left[i]:right[i]] == lo[i]).any())
        return out

    def add(self, ids: list[str]) -> None:
        """Add ids that are distinct and not in the set yet (``contains`` is False for all)."""
        if not ids:
            return
        hi, lo = _split(ids)
        hi, lo = np.concatenate([self._hi, hi]), np.concatenate([self._lo, lo])
        order = np.argsort(hi, kind="stable")
        self._hi, self._lo = hi[order], lo[order]
