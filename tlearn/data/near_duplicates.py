"""Every pair of binary hashes within a Hamming distance, found exactly without comparing every pair.

Multi-index hashing with the generalised pigeonhole principle: cut the bits into `m` parts;
two hashes that differ in at most `t` bits differ in at most `r` bits of some part whenever
m * (r + 1) > t. So each part is indexed in a table of buckets by its value, and only the
hashes in a hash's own bucket (r = 0) or in the buckets one bit away (r = 1) are candidates;
each candidate's full distance is then computed, so the result is exactly the pairs within
`t`: nothing approximate is left. For the 256-bit hashes of check at its default threshold
of 24 bits and a million hashes that is 13 parts of 19 bits, each probed 20 ways: about
2e8 candidates instead of 5e11 pairs.

When the buckets are so full that the candidates would outnumber the pairs (a very high
threshold, or many identical hashes), every pair is compared in tiles instead.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

# Parts of at most this many bits, so that each part's bucket table (int64 counts and starts)
# stays within 2 x 32 MB: enough for about a hash a bucket at 4 million hashes.
MAX_PART_BITS = 22
# Candidates expanded and verified at a time: bounds memory (about 100 bytes each) to ~0.4 GB.
CANDIDATES_PER_BATCH = 4_000_000
# Verifying a candidate costs a few times what comparing one pair in tiles does, so the index is
# used only when it looks at fewer than this share of all pairs.
INDEX_MAX_CANDIDATE_SHARE = 0.25


def hamming_pairs(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """Every pair (i, j), i < j, of rows of `hashes` that differ in at most `threshold` bits.

    `hashes` is an (n, bytes) uint8 array, one hash a row. Returns an int64 array of shape
    (pairs, 2), sorted by i then j: exactly the pairs that comparing every pair finds. Every
    pair is compared instead where the index would give more candidates than
    INDEX_MAX_CANDIDATE_SHARE of them (a very high threshold, or many identical hashes).
    """
    hashes = _validated(hashes)
    count, bits = hashes.shape[0], hashes.shape[1] * 8
    if threshold < 0 or count < 2:
        return np.empty((0, 2), np.int64)
    if threshold >= bits:
        return _all_pairs(count)
    plan = _part_plan(count, bits, threshold)
    index = _PartIndex(hashes, *plan) if plan is not None else None
    if index is None or index.candidates() > INDEX_MAX_CANDIDATE_SHARE * count * (count - 1) / 2:
        return exhaustive_hamming_pairs(hashes, threshold)
    words = _as_words(hashes)
    found = [_within(words, first, second, threshold) for first, second in index.candidate_batches()]
    return _sorted_unique(np.concatenate(found) if found else np.empty((0, 2), np.int64))


def exhaustive_hamming_pairs(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """`hamming_pairs` by comparing every pair, in tiles that keep memory under ~100 MB."""
    words = _as_words(_validated(hashes))
    count = words.shape[0]
    columns = max(1, min(count, 1 << 20))
    rows = max(1, (1 << 22) // columns)
    found = []
    for row in range(0, count, rows):
        block = words[row : row + rows]
        for column in range(row, count, columns):
            distances = _tile_distances(block, words[column : column + columns])
            first, second = np.nonzero(distances <= threshold)
            first, second = first + row, second + column
            keep = first < second
            found.append(np.stack([first[keep], second[keep]], axis=1))
    return _sorted_unique(np.concatenate(found) if found else np.empty((0, 2), np.int64))


def _validated(hashes: np.ndarray) -> np.ndarray:
    hashes = np.ascontiguousarray(hashes)
    if hashes.dtype != np.uint8 or hashes.ndim != 2:
        raise ValueError(f"hashes must be a 2-d uint8 array (one hash a row), got {hashes.dtype} {hashes.shape}")
    return hashes


def _as_words(hashes: np.ndarray) -> np.ndarray:
    """The hashes as rows of uint64 words (zero-padded), for popcounts a word at a time."""
    padding = -hashes.shape[1] % 8
    if padding:
        hashes = np.pad(hashes, ((0, 0), (0, padding)))
    return np.ascontiguousarray(hashes).view(np.uint64)


def _tile_distances(block: np.ndarray, columns: np.ndarray) -> np.ndarray:
    distances = np.zeros((block.shape[0], columns.shape[0]), np.uint16)
    for word in range(block.shape[1]):
        distances += np.bitwise_count(block[:, word, None] ^ columns[None, :, word])
    return distances


def _all_pairs(count: int) -> np.ndarray:
    first, second = np.triu_indices(count, k=1)
    return np.stack([first, second], axis=1).astype(np.int64)


def _sorted_unique(pairs: np.ndarray) -> np.ndarray:
    return np.unique(pairs.astype(np.int64), axis=0) if len(pairs) else pairs.astype(np.int64).reshape(0, 2)


def _part_plan(count: int, bits: int, threshold: int) -> tuple[list[int], int] | None:
    """(part widths, radius): parts that guarantee every pair within `threshold` meets in one
    of them, with the fewest lookups and expected candidates on random hashes; None when the
    bits are too few to cut into enough parts.

    Parts need not cover every bit (a pair within `threshold` over all bits is within it over
    the covered ones): a part about log2(count) bits wide leaves about one hash a bucket, and
    a wider one would only cost a larger table.
    """
    wanted = min(MAX_PART_BITS, max(8, math.ceil(math.log2(count)) + 1))
    best, best_cost = None, math.inf
    for radius in (0, 1):
        parts = math.ceil((threshold + 1) / (radius + 1))
        if parts > bits:
            continue
        width = min(wanted, bits // parts)
        lookups = count * parts * (1 + radius * width)
        candidates = count * (count - 1) / 2 * parts * (1 + radius * width) / 2.0**width
        if lookups + candidates < best_cost:
            best, best_cost = ([width] * parts, radius), lookups + candidates
    return best


class _PartIndex:
    """Bucket tables of each part of the hashes, and the candidate pairs they give."""

    def __init__(self, hashes: np.ndarray, widths: list[int], radius: int):
        self.widths, self.radius = widths, radius
        self.keys = _part_keys(hashes, widths)

    def _table(self, part: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(keys, hashes in key order, first position of each bucket in that order, bucket sizes)."""
        keys = self.keys[:, part]
        counts = np.bincount(keys, minlength=1 << self.widths[part])
        order = np.argsort(keys, kind="stable")
        return keys, order, np.cumsum(counts) - counts, counts

    def candidates(self) -> int:
        """How many candidate pairs `candidate_batches` gives (pairs met in several parts count once a part)."""
        total = 0
        for part, width in enumerate(self.widths):
            counts = np.bincount(self.keys[:, part], minlength=1 << width).astype(np.int64)
            total += int((counts * (counts - 1) // 2).sum())
            for bit in range(width if self.radius else 0):
                halves = counts.reshape(-1, 2, 1 << bit)  # buckets without and with this bit
                total += int((halves[:, 0, :] * halves[:, 1, :]).sum())
        return total

    def candidate_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(first, second) index arrays of candidate pairs, batch by batch; a pair may come
        from more than one part, never twice from one."""
        for part, width in enumerate(self.widths):
            keys, order, starts, counts = self._table(part)
            # same bucket: each hash pairs with those after it in key order
            position = np.arange(len(keys))
            ends = starts[keys[order]] + counts[keys[order]]
            yield from _expand(order, position + 1, ends - position - 1, order)
            for bit in range(width if self.radius else 0):
                # buckets one bit apart: asked from the side without the bit, so once
                queries = np.nonzero((keys >> bit) & 1 == 0)[0]
                neighbours = keys[queries] | (1 << bit)
                yield from _expand(queries, starts[neighbours], counts[neighbours], order)


def _part_keys(hashes: np.ndarray, widths: list[int], rows: int = 1 << 16) -> np.ndarray:
    """Each hash's value in each part, as an (n, parts) uint32 array (bits read most significant first)."""
    weights = np.zeros((hashes.shape[1] * 8, len(widths)), np.float32)
    offset = 0
    for part, width in enumerate(widths):  # float32 is exact up to 2**24 > 2**MAX_PART_BITS
        weights[offset : offset + width, part] = 2.0 ** np.arange(width - 1, -1, -1)
        offset += width
    keys = np.empty((hashes.shape[0], len(widths)), np.uint32)
    for row in range(0, hashes.shape[0], rows):
        bits = np.unpackbits(hashes[row : row + rows], axis=1).astype(np.float32)
        keys[row : row + rows] = (bits @ weights).astype(np.uint32)
    return keys


def _expand(queries: np.ndarray, starts: np.ndarray, counts: np.ndarray, order: np.ndarray
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs of each query with the `counts` hashes at `starts` onwards in `order`, in batches
    of about CANDIDATES_PER_BATCH (without building one array of all of them)."""
    nonempty = counts > 0
    queries, starts, counts = queries[nonempty], starts[nonempty], counts[nonempty].astype(np.int64)
    if not len(counts):
        return
    ends = np.cumsum(counts)
    cuts = np.searchsorted(ends, np.arange(CANDIDATES_PER_BATCH, ends[-1], CANDIDATES_PER_BATCH))
    for low, high in zip([0, *cuts], [*cuts, len(counts)]):
        if low == high:
            continue
        batch = counts[low:high]
        offsets = np.arange(batch.sum()) - np.repeat(np.cumsum(batch) - batch, batch)
        yield np.repeat(queries[low:high], batch), order[np.repeat(starts[low:high], batch) + offsets]


def _within(words: np.ndarray, first: np.ndarray, second: np.ndarray, threshold: int) -> np.ndarray:
    """The candidate pairs whose whole hashes differ in at most `threshold` bits, as (low, high) rows."""
    # the last word alone first: it rules out most random candidates (over a third of its 64
    # bits differ) for a quarter of the work; the parts start at the first bit, so it is the least
    # likely to have matched already
    close = np.bitwise_count(words[first, -1] ^ words[second, -1]) <= threshold
    first, second = first[close], second[close]
    distances = np.bitwise_count(words[first] ^ words[second]).sum(axis=1, dtype=np.uint16)
    keep = distances <= threshold
    first, second = first[keep], second[keep]
    return np.stack([np.minimum(first, second), np.maximum(first, second)], axis=1).astype(np.int64)
