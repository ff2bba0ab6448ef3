import os
import re

import datasets
import numpy as np
import pyarrow as pa
import pytest
from conftest import array2d_dataset, list_column, matrices

from featstore import ColumnError, read_column
from featstore.columns import column_layout, column_parts, join_parts, mapped_ranges
from featstore.keys import array_digest, parts_digest


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32, np.int64, np.uint8])
def test_array2d_roundtrip_every_dtype(dtype):
    values = (matrices(7, (3, 5)) * 10).astype(dtype)
    out = read_column(array2d_dataset(values), "layer_a")
    assert out.dtype == dtype and out.shape == (7, 3, 5)
    np.testing.assert_array_equal(out, values)


def test_array3d():
    values = matrices(6, (2, 3, 4))
    np.testing.assert_array_equal(read_column(array2d_dataset(values), "layer_a"), values)


@pytest.mark.parametrize("fixed", [False, True])
def test_nested_lists_fixed_and_variable(fixed):
    values = matrices(9, (4, 3), dtype=np.float64)
    ds = datasets.Dataset(pa.table({"w": list_column(values, fixed=fixed)}))
    out = read_column(ds, "w")
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, values)


def test_sliced_arrow_arrays_respect_offsets():
    values = matrices(10, (2, 2))
    for fixed in (False, True):
        table = pa.table({"w": list_column(values, fixed=fixed).slice(3, 4)})
        np.testing.assert_array_equal(read_column(table, "w"), values[3:7])


def test_single_chunk_is_zero_copy_and_read_only():
    values = matrices(5)
    ds = array2d_dataset(values)
    chunk_values = ds.data.column("layer_a").chunks[0].storage.values.values
    out = read_column(ds, "layer_a")
    assert not out.flags.writeable
    assert out.ctypes.data == chunk_values.buffers()[1].address + chunk_values.offset * 4


def test_several_chunks_are_joined_in_order(tmp_path):
    a, b, c = matrices(3, seed=1), matrices(4, seed=2), matrices(5, seed=3)
    ds = datasets.concatenate_datasets([array2d_dataset(x) for x in (a, b, c)])
    assert ds.data.column("layer_a").num_chunks == 3
    out = read_column(ds, "layer_a")
    np.testing.assert_array_equal(out, np.concatenate([a, b, c]))
    layout, parts = column_parts(ds, "layer_a")
    assert len(parts) == 3
    assert parts_digest(parts, layout.dtype, out.shape) == array_digest(out)
    for start in (0, 2, 3, 4, 7, 11, 12):  # a tail of the rows, starting inside or at a part's edge
        np.testing.assert_array_equal(join_parts(layout, parts, start), out[start:])
    for start, stop in ((0, 3), (1, 2), (2, 5), (3, 7), (4, 6), (2, 12), (7, 12), (5, 5), (10, 40)):  # a block of rows
        block = join_parts(layout, parts, start, stop)
        np.testing.assert_array_equal(block, out[start:stop])
        inside_one = start >= 7 or stop <= 3 or 3 <= start and stop <= 7
        assert (not block.flags.writeable) == (inside_one or stop == start)  # a view of one part, else a copy


def test_indices_mapping_select_shuffle_filter(tmp_path):
    values = matrices(20)
    labels = np.arange(20) % 3
    ds = datasets.concatenate_datasets([array2d_dataset(values[:8], labels[:8]), array2d_dataset(values[8:], labels[8:])])
    picked = ds.select([15, 2, 9, 9, 0])
    np.testing.assert_array_equal(read_column(picked, "layer_a"), values[[15, 2, 9, 9, 0]])
    shuffled = ds.shuffle(seed=4)
    order = shuffled._indices.column(0).to_numpy()
    np.testing.assert_array_equal(read_column(shuffled, "layer_a"), values[order])
    kept = ds.filter(lambda y: y == 1, input_columns="category_label")
    np.testing.assert_array_equal(read_column(kept, "layer_a"), values[labels == 1])
    np.testing.assert_array_equal(read_column(kept, "category_label"), labels[labels == 1])


def test_saved_dataset_reads_from_memory_map(tmp_path):
    values = matrices(50, (8, 8))
    array2d_dataset(values).save_to_disk(str(tmp_path / "saved"))
    ds = datasets.load_from_disk(str(tmp_path / "saved"))
    np.testing.assert_array_equal(read_column(ds, "layer_a"), values)


def test_ragged_rows_name_the_column_and_first_bad_row():
    rows = [[[1.0, 2.0], [3.0, 4.0]]] * 3 + [[[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]] + [[[1.0, 2.0], [3.0, 4.0]]]
    ds = datasets.Dataset.from_dict({"w": rows})
    with pytest.raises(ColumnError, match=r"'w' is ragged: row 3"):
        read_column(ds, "w")
    with pytest.raises(ColumnError, match=r"row 3"):
        column_layout(ds, "w")


def test_ragged_across_chunks_reports_the_dataset_row():
    a = datasets.Dataset.from_dict({"w": [[1.0, 2.0]] * 4})
    b = datasets.Dataset.from_dict({"w": [[1.0, 2.0, 3.0]] * 2})
    with pytest.raises(ColumnError, match=r"row 4 has values of shape \(3,\)"):
        read_column(datasets.concatenate_datasets([a, b]), "w")


def test_ragged_rows_outside_a_selection_do_not_matter():
    ds = datasets.Dataset.from_dict({"w": [[1.0, 2.0], [1.0], [3.0, 4.0]]})
    np.testing.assert_array_equal(read_column(ds.select([0, 2]), "w"), [[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ColumnError, match=r"row 1"):
        read_column(ds.select([2, 1]), "w")


@pytest.mark.parametrize(
    "rows, where",
    [
        ([[1.0, 2.0], None, [3.0, 4.0]], "row 1"),
        ([[1.0, 2.0], [3.0, 4.0], [None, 4.0]], "row 2"),
        ([[[1.0], [2.0]], [[1.0], None]], "row 1"),
    ],
)
def test_nulls_name_the_first_bad_row(rows, where):
    ds = datasets.Dataset.from_dict({"w": rows})
    with pytest.raises(ColumnError, match=rf"null at {where}\b"):
        read_column(ds, "w")


def test_strings_and_missing_columns_are_named_errors():
    ds = datasets.Dataset.from_dict({"s": [["a", "b"], ["c", "d"]], "t": ["x", "y"]})
    with pytest.raises(ColumnError, match=r"column 's' holds string values"):
        read_column(ds, "s")
    with pytest.raises(ColumnError, match=r"column 't' holds string"):
        read_column(ds, "t")
    with pytest.raises(ColumnError, match=r"'nope' not found; columns: s, t"):
        read_column(ds, "nope")
    assert isinstance(ColumnError("x"), ValueError)


def _resident(path) -> int:
    """Bytes of the file at `path` resident in this process: its mappings' Rss in /proc/self/smaps."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
                inside = line.rstrip().endswith(os.path.realpath(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads the resident set from /proc")
def test_mapped_pages_are_let_go_of_every_release_bytes_and_fault_back_in(tmp_path, monkeypatch):
    from featstore import sources

    values = matrices(300, (32, 32))  # 1.2 MB a column
    features = datasets.Features({name: datasets.Array2D((32, 32), "float32") for name in "abc"})
    datasets.Dataset.from_dict(dict.fromkeys("abc", values), features=features).save_to_disk(str(tmp_path / "saved"))
    split = sources.load_source(str(tmp_path / "saved")).splits["train"]
    monkeypatch.setattr("featstore.split.RELEASE_BYTES", 3 * values.nbytes)
    assert mapped_ranges(split.files), "a saved dataset is memory-mapped"
    resident = []
    for layer in "abc":
        _, parts = split.parts(layer)
        assert sum(float(p.sum()) for p in parts) == pytest.approx(float(values.sum()), rel=1e-4)  # pages in
        split.release(parts)
        resident.append(_resident(split.files[0]))
    assert resident[0] >= values.nbytes and resident[1] >= 2 * values.nbytes  # kept until 3 columns were read
    assert resident[2] < values.nbytes / 4  # then all let go of at once
    np.testing.assert_array_equal(split.read("b"), values)  # and read back from the page cache
    assert mapped_ranges([]) == []  # nothing but the files' own mappings is ever released


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads the resident set from /proc")
def test_a_streamed_column_keeps_one_run_of_rows_resident(tmp_path, monkeypatch):
    from featstore import sources
    from featstore.columns import release_within

    values = matrices(4096, (32, 32))  # 16.8 MB, 4 KB a row
    features = datasets.Features({"a": datasets.Array2D((32, 32), "float32")})
    datasets.Dataset.from_dict({"a": values}, features=features).save_to_disk(str(tmp_path / "saved"))
    split = sources.load_source(str(tmp_path / "saved")).splits["train"]
    monkeypatch.setattr("featstore.split.RELEASE_BYTES", 512 * 4096)
    _, parts = split.parts("a")
    pieces, resident = [], []
    for piece in split.streamed(parts):
        pieces.append(float(piece.sum()))  # its pages in
        resident.append(_resident(split.files[0]))
    assert sum(pieces) == pytest.approx(float(values.sum()), rel=1e-4)
    # a run of rows or two (the kernel maps pages around the one faulted in), never the whole column
    assert max(resident) < values.nbytes / 2
    assert _resident(split.files[0]) < values.nbytes / 8  # the last run let go of too
    np.testing.assert_array_equal(np.concatenate(list(split.streamed(parts))), values)  # in order, and
    assert max(len(p) for p in split.streamed(parts)) == 512  # a run of rows at most (parts are Arrow chunks)
    copy = np.array(parts[0])
    release_within(copy, mapped_ranges(split.files))  # anonymous memory: outside the file's ranges
    np.testing.assert_array_equal(copy, values[: len(copy)])


@pytest.mark.parametrize("list_type", [pa.list_, pa.large_list])
def test_list_and_large_list_offsets_sliced(list_type):
    values = matrices(10, (2, 3))
    rows = pa.array(values.tolist(), type=list_type(list_type(pa.float32())))
    table = pa.table({"w": rows.slice(2, 5)})
    np.testing.assert_array_equal(read_column(table, "w"), values[2:7])
    ragged = pa.array([[[1.0, 2.0]], [[1.0, 2.0], [3.0, 4.0]]], type=list_type(list_type(pa.float32())))
    with pytest.raises(ColumnError, match="row 1 has a list of length 2"):
        read_column(pa.table({"w": ragged}), "w")


def test_checking_a_column_does_not_import_pandas(tmp_path):
    """Array.to_numpy imports pandas: 0.3 s of every fresh `featstore build` on changed data."""
    import subprocess
    import sys

    datasets.Dataset(pa.table({"w": list_column(matrices(4, (2, 3)))})).save_to_disk(str(tmp_path / "ds"))
    code = ("import sys; from featstore.sources import load_source; "
            f"split = load_source({str(tmp_path / 'ds')!r}).splits['train']; "
            "print(split.layout('w').rows, split.read('w').shape, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["4", "(4,", "2,", "3)", "False"]
