"""Many transactions folded at once, column by column, into the accumulators of ``lantern.features``.

The block reader hands a bundle's rows here as columns; one vectorised pass per
block keeps one accumulator per member (exact sums, counts, the three most recent
transactions) and ``drain`` packs them in ``lantern.features.pack``'s layout, the
format the batch shuffle already carries. Same rows in, same bytes out as folding
them one by one with ``lantern.features.add``.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lantern.features import POINTS, REVENUE, SCALE_BITS, exact, pack, unpack

_LIMB_BITS = 32
_LIMB_MASK = (1 << _LIMB_BITS) - 1
_WINDOW = 6  # limbs per sum kept in int64 columns: 192 bits around the values first seen
# Rows per vectorised step: limbs are below 2**32 in magnitude, so a sum of 2**21 of them stays below
# 2**53, exact in a float64 bincount; above the buffer size, so a buffer folds in one pass over its members.
_CHUNK = 1 << 21
_BUFFER_ROWS = 1 << 20  # rows buffered before a fold: one slot lookup per buffer, memory still bounded
_NO_TS = np.iinfo(np.int64).min  # an empty last-3 slot: older than any transaction
# An empty last-3 entry as int64 fields (ts, points bits, revenue bits, type).
_EMPTY_ENTRY = np.array([_NO_TS, np.array(-np.inf).view(np.int64), np.array(-np.inf).view(np.int64), -1])


def limbs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each finite double as three signed 32-bit limbs: ``value * 2**1074 ==
    sum(limb[k] << 32 * (index + k))``. Returns (index, limbs of shape (n, 3)).

    ``np.frexp`` gives ``value = m * 2**(e - 53)`` with an integer ``m`` below 2**53;
    shifting ``m`` by ``(e - 53 + 1074) % 32`` spreads it over three limbs of 32 bits, so
    sums of limbs stay exact in int64 for more than 2**30 rows.
    """
    frac, exp = np.frexp(values)
    mant = (frac * float(1 << 53)).astype(np.int64)
    pos = exp.astype(np.int64) + (SCALE_BITS - 53)
    # Subnormals: frexp normalises them below 2**-1074; their mantissa has the zeros to give back.
    under = pos < 0
    if under.any():
        mant = np.where(under, mant >> np.minimum(-pos, 63), mant)
        pos = np.maximum(pos, 0)
    index = pos >> 5
    shift = (pos & 31).astype(np.uint64)
    mag = np.abs(mant).astype(np.uint64)
    low = (mag & np.uint64(_LIMB_MASK)) << shift
    high = ((mag >> np.uint64(32)) << shift) + (low >> np.uint64(32))
    out = np.empty((len(values), 3), dtype=np.int64)
    out[:, 0] = (low & np.uint64(_LIMB_MASK)).astype(np.int64)
    out[:, 1] = (high & np.uint64(_LIMB_MASK)).astype(np.int64)
    out[:, 2] = (high >> np.uint64(32)).astype(np.int64)
    out *= np.sign(mant)[:, None]
    return index, out


def _greater(a: tuple, b: tuple) -> np.ndarray:
    """Row-wise ``a > b`` for (ts, points, revenue, type) column tuples: the last-3 order."""
    ts_a, p_a, r_a, t_a = a
    ts_b, p_b, r_b, t_b = b
    return (ts_a > ts_b) | ((ts_a == ts_b) & (
        (p_a > p_b) | ((p_a == p_b) & ((r_a > r_b) | ((r_a == r_b) & (t_a > t_b))))))


def _order_by_member_then_time(codes: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row order ascending by (code, ts); ties in any order. One int64 sort key when the codes
    and the timestamps' span fit in it (timestamps of whole seconds usually do), else a lexsort."""
    if not len(codes):
        return np.empty(0, dtype=np.int64)
    low = int(ts.min())
    span = int(ts.max()) - low
    unit = 1_000_000 if not ((ts - low) % 1_000_000).any() else 1
    code_bits = int(codes.max()).bit_length()
    time_bits = (span // unit).bit_length()
    if code_bits + time_bits > 62:
        return np.lexsort((ts, codes))
    key = (codes << time_bits) | ((ts - low) // unit)
    return np.argsort(key, kind="stable")


class MemberTable:
    """Accumulators of many members as columns: the batch reader's fold of a whole bundle.

    Rows arrive as numpy columns; one vectorised group-by per call folds them into
    per-member counts, exact sums (int64 limbs, see ``limbs``) and the three most recent
    transactions. ``drain`` hands back one packed accumulator per member (``pack``), the
    format ``MemberFeaturesFn`` merges, equal to folding the same rows one by one with
    ``add``. Memory grows with the members held, not with the rows folded.
    """

    def __init__(self, capacity: int = 1024, buffer_rows: int = _BUFFER_ROWS):
        self._buffer_rows = buffer_rows
        self._pending: list[tuple] = []  # blocks' rows not folded yet (see ``add``)
        self._pending_rows = 0
        self._ids = pa.array([], pa.string())  # member of each slot
        self._alloc(capacity)
        self._base: int | None = None  # limb index of column 0 of the sums
        self._outside: dict[int, list[int]] = {}  # slot -> [points, revenue] parts beyond the window

    def _alloc(self, capacity: int) -> None:
        self._counts = np.zeros((capacity, 4), dtype=np.int64)  # n, n_buy, n_gift, n_redeem
        self._sums = np.zeros((2, capacity, _WINDOW), dtype=np.int64)  # points, revenue
        # Last three as one record per slot: 3 x (ts, points bits, revenue bits, type), one gather per slot.
        self._last3 = np.empty((capacity, 3, 4), dtype=np.int64)
        self._last3[:] = _EMPTY_ENTRY

    def _grow(self, needed: int) -> None:
        size = len(self._counts)
        if needed <= size:
            return
        old = (self._counts, self._sums, self._last3)
        self._alloc(max(needed, 2 * size))
        self._counts[:size], self._last3[:size] = old[0], old[2]
        self._sums[:, :size] = old[1]

    def __len__(self) -> int:
        """Members folded so far (rows still buffered are not counted until ``flush``)."""
        return len(self._ids)

    def slots(self, members) -> np.ndarray:
        """The slot of each of ``members`` (distinct ids; a list or a pyarrow string array), new ones appended.

        One hash lookup in Arrow per call, so members cost no Python per row.
        """
        members = members if isinstance(members, pa.Array) else pa.array(members, pa.string())
        held = len(self._ids)
        found = pc.index_in(members, value_set=self._ids) if held else pa.nulls(len(members), pa.int32())
        new = found.is_null().to_numpy(zero_copy_only=False)
        out = found.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        if new.any():
            out[new] = held + np.arange(int(new.sum()))
            self._ids = pa.concat_arrays([self._ids, members.filter(pa.array(new))])
            self._grow(len(self._ids))
        return out

    def add_members(self, members) -> None:
        """Members seen without a transaction (member-only rows): they get an accumulator with n=0.

        Buffered like transactions: the slot lookup hashes every member held, so it is paid
        once per buffer, and not at all for a block without member-only rows.
        """
        if not len(members):
            return
        members = members if isinstance(members, pa.Array) else pa.array(members, pa.string())
        members = pc.unique(members)
        none = np.empty(0, dtype=np.int64)
        self._pending.append((members, none, none, none, np.empty(0), np.empty(0)))
        self._pending_rows += len(members)
        if self._pending_rows >= self._buffer_rows:
            self.flush()

    def add(self, members, codes: np.ndarray, ts: np.ndarray, types: np.ndarray,
            points: np.ndarray, revenue: np.ndarray) -> None:
        """Fold transactions: row i is member ``members[codes[i]]`` (``members`` distinct; a list or
        a pyarrow string array).

        Rows are buffered and folded together once ``buffer_rows`` are held (and before ``drain``):
        finding the members' slots costs a hash of every member held, so it is paid once per
        buffer, not once per block.
        """
        members = members if isinstance(members, pa.Array) else pa.array(members, pa.string())
        self._pending.append((members, codes, ts, types, points, revenue))
        self._pending_rows += len(codes)
        if self._pending_rows >= self._buffer_rows:
            self.flush()

    def flush(self) -> None:
        """Fold the buffered rows: their members dictionary-encoded together, one slot lookup."""
        pending, self._pending, self._pending_rows = self._pending, [], 0
        if not pending:
            return
        if len(pending) == 1:
            self._fold_all(*pending[0])
            return
        encoded = pa.concat_arrays([part[0] for part in pending]).dictionary_encode()
        remap = encoded.indices.to_numpy().astype(np.int64)
        offsets = np.cumsum([0] + [len(part[0]) for part in pending])
        codes = np.concatenate([remap[offset + part[1]] for offset, part in zip(offsets, pending, strict=False)])
        columns = [np.concatenate([part[k] for part in pending]) for k in range(2, 6)]
        self._fold_all(encoded.dictionary, codes, *columns)

    def _fold_all(self, members, codes, ts, types, points, revenue) -> None:
        slots = self.slots(members)
        for start in range(0, len(codes), _CHUNK):
            part = slice(start, start + _CHUNK)
            self._fold(slots, codes[part], ts[part], types[part], points[part], revenue[part])

    def _fold(self, slots, codes, ts, types, points, revenue) -> None:
        if not len(codes):
            return
        g = len(slots)
        self._counts[slots, 0] += np.bincount(codes, minlength=g)
        by_type = np.bincount(codes * 3 + types, minlength=3 * g).reshape(g, 3)
        self._counts[slots, 1:] += by_type
        for field, values in enumerate((points, revenue)):
            self._fold_sum(field, slots, codes, values)
        self._fold_last3(slots, codes, ts, types, points, revenue)

    def _fold_sum(self, field: int, slots, codes, values) -> None:
        index, parts = limbs(values)
        nonzero = values != 0
        if self._base is None:
            if not nonzero.any():
                return
            self._base = max(int(index[nonzero].min()) - 1, 0)
        col = index - self._base
        inside = (col >= 0) & (col + 3 <= _WINDOW)
        for row in np.flatnonzero(nonzero & ~inside):  # rare: values far from the first ones seen
            slot = int(slots[codes[row]])
            self._outside.setdefault(slot, [0, 0])[field] += exact(float(values[row]))
        keep = nonzero & inside
        g = len(slots)
        flat = (codes[keep] * _WINDOW + col[keep])[:, None] + np.arange(3)
        sums = np.bincount(flat.ravel(), weights=parts[keep].ravel().astype(np.float64), minlength=g * _WINDOW)
        self._sums[field, slots] += sums.reshape(g, _WINDOW).astype(np.int64)

    def _fold_last3(self, slots, codes, ts, types, points, revenue) -> None:
        order = _order_by_member_then_time(codes, ts)
        sorted_codes = codes[order]
        if len(order) > 1 and ((sorted_codes[1:] == sorted_codes[:-1]) & (ts[order[1:]] == ts[order[:-1]])).any():
            order = np.lexsort((types, revenue, points, ts, codes))  # equal timestamps: the full order decides
            sorted_codes = codes[order]
        ends = np.flatnonzero(np.append(sorted_codes[1:] != sorted_codes[:-1], True)) + 1
        starts = np.append(0, ends[:-1])
        target = slots[sorted_codes[starts]]  # the slots that have rows
        g = len(target)
        rows = np.empty((len(order) + 1, 4), dtype=np.int64)  # sorted rows as entries; the last one empty
        for f, column in enumerate((ts, points.view(np.int64), revenue.view(np.int64), types)):
            rows[:-1, f] = column[order]
        rows[-1] = _EMPTY_ENTRY
        # Candidates, most recent first: the slot's three held (0-2), the buffer's last three (3-5).
        pos = ends[:, None] - 1 - np.arange(3)
        cand = np.concatenate([self._last3[target], rows[np.where(pos >= starts[:, None], pos, -1)]], axis=1)
        # Merge of two lists sorted most recent first: a held entry's rank is its place plus the
        # buffer entries more recent than it; a tie keeps the held entry first (as ``add`` does).
        c_ts = cand[:, :, 0]
        newer = [[c_ts[:, 3 + j] > c_ts[:, i] for j in range(3)] for i in range(3)]
        tied = (c_ts[:, :3, None] == c_ts[:, None, 3:]) & (c_ts[:, :3, None] != _NO_TS)  # two empties: equal
        if tied.any():
            at, i_s, j_s = np.nonzero(tied)
            def entry(col):
                e = cand[at, col]
                return (e[:, 0], e[:, 1].view(np.float64), e[:, 2].view(np.float64), e[:, 3])
            decided = _greater(entry(3 + j_s), entry(i_s))
            for i in range(3):
                for j in range(3):
                    sel = (i_s == i) & (j_s == j)
                    newer[i][j][at[sel]] = decided[sel]
        pick = np.empty((g, 6), dtype=np.int64)
        rows_g = np.arange(g)
        for i in range(3):
            pick[rows_g, i + newer[i][0] + newer[i][1] + newer[i][2]] = i
        for j in range(3):
            pick[rows_g, j + 3 - newer[0][j] - newer[1][j] - newer[2][j]] = 3 + j
        self._last3[target] = cand.reshape(6 * g, 4)[(6 * rows_g)[:, None] + pick[:, :3]]

    def _limb_bytes(self, field: int, rows: slice) -> np.ndarray:
        """Members' exact sums (in window units) as little-endian two's complement bytes, one row each."""
        parts = self._sums[field, rows].copy()
        for k in range(_WINDOW - 1):  # carry: limbs 0..W-2 in [0, 2**32), the top one signed
            carry = parts[:, k] >> _LIMB_BITS
            parts[:, k] -= carry << _LIMB_BITS
            parts[:, k + 1] += carry
        n = len(parts)
        return np.concatenate([parts[:, :-1].astype("<u4").view(np.uint8).reshape(n, -1),
                               parts[:, -1:].astype("<i8").view(np.uint8).reshape(n, -1)], axis=1)

    def drain(self) -> Iterable[tuple[str, bytes]]:
        """(member, packed accumulator) for every member held; the table is empty afterwards."""
        self.flush()
        n = len(self._ids)
        ids = self._ids.to_pylist()
        packed: list[bytes] = []
        for start in range(0, n, 1 << 16):
            rows = slice(start, min(start + (1 << 16), n))
            held = self._last3[rows]
            last3 = (held[:, :, 0], held[:, :, 1].view(np.float64), held[:, :, 2].view(np.float64), held[:, :, 3])
            sums = [(self._limb_bytes(f, rows), _LIMB_BITS * (self._base or 0)) for f in (0, 1)]
            packed += pack_columns(self._counts[rows], sums, last3)
        for slot, extra in self._outside.items():  # rare: rebuilt from the exact parts in Python
            acc = unpack(packed[slot])
            acc[POINTS] += extra[0]
            acc[REVENUE] += extra[1]
            packed[slot] = pack(acc)
        self.__init__(buffer_rows=self._buffer_rows)
        return zip(ids, packed, strict=True)


SHARDS = 256  # member shards of the batch shuffle: enough to spread the merge over many workers
# Input bytes per shard past SHARDS shards: a shard's members (the merge's working set for one key)
# are at most the members of this much input, whatever the size of the job.
SHARD_INPUT_BYTES = 16 << 20


def shards_for(input_bytes: int, shard_bytes: int = SHARD_INPUT_BYTES, minimum: int = SHARDS) -> int:
    """The shuffle's shard count for an input of ``input_bytes``: at least ``minimum``, and one shard
    per ``shard_bytes`` of input, so no shard holds more members than that much input can name.

    Chosen at launch from the sizes matched then and passed to every worker, so every process
    shards members alike.
    """
    return max(minimum, -(-input_bytes // shard_bytes), 1)


def shard_of(member: str, shards: int = SHARDS) -> int:
    """A member's shard: a checksum of its id, the same in every process (``hash`` is salted per process)."""
    return zlib.crc32(member.encode()) % shards


def shard_batches(members: Iterable[tuple[str, bytes]], shards: int = SHARDS,
                  origin: dict[bytes, bytes] | None = None) -> Iterator[tuple[int, bytes]]:
    """(member, packed accumulator) pairs -> (shard, batch) with every member in its ``shard_of``.

    The batch shuffle then moves a few hundred elements per bundle instead of one per member;
    a batch is an Arrow IPC stream of (MEMBER_ID string, ACC binary), read by ``read_batch``.
    ``origin`` is kept as the batch schema's metadata (a base state's batches say so: ``merge_tables``).
    """
    ids: list[list[str]] = [[] for _ in range(shards)]
    accs: list[list[bytes]] = [[] for _ in range(shards)]
    for member, acc in members:
        shard = zlib.crc32(member.encode()) % shards
        ids[shard].append(member)
        accs[shard].append(acc)
    for shard in range(shards):
        if ids[shard]:
            batch = pa.record_batch([pa.array(ids[shard], pa.string()), pa.array(accs[shard], pa.binary())],
                                    names=["MEMBER_ID", "ACC"])
            if origin:
                batch = batch.replace_schema_metadata(origin)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as writer:
                writer.write_batch(batch)
            yield shard, sink.getvalue().to_pybytes()


def read_batch(data: bytes) -> tuple[list[str], list[bytes]]:
    """A ``shard_batches`` batch -> (member ids, packed accumulators)."""
    table = pa.ipc.open_stream(data).read_all()
    return table.column("MEMBER_ID").to_pylist(), table.column("ACC").to_pylist()


def merge_batches(batches: Iterable[bytes], merge: Callable[[list[bytes]], bytes]) -> tuple[pa.Array, pa.Array]:
    """A shard's ``shard_batches`` batches -> (member ids, packed accumulators), one row per member."""
    return merge_tables([pa.ipc.open_stream(data).read_all() for data in batches], merge)


def merge_tables(tables: list[pa.Table], merge: Callable[[list[bytes]], bytes]) -> tuple[pa.Array, pa.Array]:
    """A shard's batches as tables -> (member ids, packed accumulators), one row per member.

    A member folded in several bundles (or held in a base state and folded again today) has an
    accumulator in several batches: those are combined with ``merge`` (given the member's packed
    accumulators, it returns one); the others are passed on as they are, columns in, columns out.
    """
    tables = [t.replace_schema_metadata(None) if t.schema.metadata else t for t in tables]
    if not tables:
        return pa.array([], pa.string()), pa.array([], pa.binary())
    table = pa.concat_tables(tables).combine_chunks()
    if not table.num_rows:
        return pa.array([], pa.string()), pa.array([], pa.binary())
    ids, accs = table.column("MEMBER_ID").chunk(0), table.column("ACC").chunk(0)
    if len(tables) == 1 or pc.count_distinct(ids).as_py() == len(ids):
        return ids, accs
    # Only members with several accumulators are merged in Python; the others pass on as columns.
    encoded = ids.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    repeated = np.bincount(codes)[codes] > 1
    once = pa.array(np.flatnonzero(~repeated))
    held: dict[str, list[bytes]] = {}
    rows = np.flatnonzero(repeated)
    for member, acc in zip(ids.take(pa.array(rows)).to_pylist(), accs.take(pa.array(rows)).to_pylist(), strict=True):
        held.setdefault(member, []).append(acc)
    return (pa.concat_arrays([ids.take(once), pa.array(list(held), pa.string())]),
            pa.concat_arrays([accs.take(once), pa.array([merge(parts) for parts in held.values()], pa.binary())]))


_CTZ = np.array([0] + [(i & -i).bit_length() - 1 for i in range(1, 256)], dtype=np.int64)
_BITLEN = np.array([i.bit_length() for i in range(256)], dtype=np.int64)
# The packed layout of ``lantern.features.pack`` as numpy records (big-endian, as ``struct`` writes it).
PACKED_COUNTS = np.dtype([("n", ">i8"), ("buy", ">i8"), ("gift", ">i8"), ("redeem", ">i8"), ("k", "u1")])
PACKED_ENTRY = np.dtype([("ts", ">i8"), ("points", ">f8"), ("revenue", ">f8"), ("type", "u1")])
PACKED_SUM_HEAD = np.dtype([("shift", ">u2"), ("size", ">u2")])


def _odd_parts(data: np.ndarray, base_shift: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_pack_sum`` for many sums at once. ``data``: (n, w) little-endian two's complement bytes
    of each sum divided by 2**base_shift. Returns (shift, size, big-endian odd part right-aligned in w bytes)."""
    n, w = data.shape
    nonzero = data != 0
    any_bit = nonzero.any(axis=1)
    first = np.argmax(nonzero, axis=1)
    rows = np.arange(n)
    bits = _CTZ[data[rows, first]]
    shift = np.where(any_bit, 8 * first + bits + base_shift, 0)
    sign = np.where(data[:, -1] >= 128, 255, 0).astype(np.uint16)
    cols = np.arange(w + 1)[None, :] + first[:, None]
    wide = np.where(cols < w, data[rows[:, None], np.minimum(cols, w - 1)], sign[:, None]).astype(np.uint16)
    odd = (((wide[:, :-1] >> bits[:, None]) | (wide[:, 1:] << (8 - bits[:, None]))) & 255).astype(np.uint8)
    magnitude = np.where(sign[:, None] == 255, ~odd, odd)
    magnitude[:, 0] |= (sign == 255).astype(np.uint8)  # -odd == ~odd + 1 == ~odd | 1 for an odd number
    top = w - 1 - np.argmax(magnitude[:, ::-1] != 0, axis=1)
    bit_length = np.where((magnitude != 0).any(axis=1), 8 * top + _BITLEN[magnitude[rows, top]], 0)
    return shift, (bit_length + 8) // 8, odd[:, ::-1]


def pack_columns(counts: np.ndarray, sums: list[tuple[np.ndarray, int]], last3: tuple) -> list[bytes]:
    """``pack`` for many accumulators given as columns, byte for byte: counts (n, 4), the two sums
    as (bytes, base shift) for ``_odd_parts``, last3 as (ts, points, revenue, type) arrays of (n, 3)."""
    n = len(counts)
    k = np.minimum(counts[:, 0], 3)
    head = np.empty(n, dtype=PACKED_COUNTS)
    head["n"], head["buy"], head["gift"], head["redeem"], head["k"] = (*counts.T, k)
    entries = np.empty((n, 3), dtype=PACKED_ENTRY)
    for name, column in zip(("ts", "points", "revenue", "type"), last3, strict=True):
        entries[name] = column
    parts, sizes = [], []
    for data, base_shift in sums:
        shift, size, odd = _odd_parts(data, base_shift)
        sum_head = np.empty(n, dtype=PACKED_SUM_HEAD)
        sum_head["shift"], sum_head["size"] = shift, size
        parts.append((sum_head.view(np.uint8).reshape(n, -1), odd))
        sizes.append(size)
    head_bytes = head.view(np.uint8).reshape(n, -1)
    entry_bytes = entries.view(np.uint8).reshape(n, -1)
    width = parts[0][1].shape[1]
    # Records of one shape (sum sizes, entries) have one length: each shape is one fixed-width copy.
    # (Sizes stay below 4096 bytes: an exact sum of doubles spans at most about 2,200 bits.)
    shape = (sizes[0].astype(np.int64) * 4096 + sizes[1]) * 4 + k
    order = np.argsort(shape, kind="stable")
    bounds = np.flatnonzero(np.diff(shape[order])) + 1
    out: list[bytes] = [b""] * n
    for rows in np.split(order, bounds):
        if not len(rows):
            continue
        size_p, size_r, n_last = int(sizes[0][rows[0]]), int(sizes[1][rows[0]]), int(k[rows[0]])
        (head_p, odd_p), (head_r, odd_r) = parts
        block = np.concatenate([head_bytes[rows], head_p[rows], odd_p[rows, width - size_p:],
                                head_r[rows], odd_r[rows, width - size_r:],
                                entry_bytes[rows, :PACKED_ENTRY.itemsize * n_last]], axis=1)
        size = block.shape[1]
        flat = block.tobytes()
        for i, row in enumerate(rows.tolist()):
            out[row] = flat[i * size:(i + 1) * size]
    return out
