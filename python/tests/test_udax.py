"""udax from Python: numpy arrays and memoryviews over a mapping (zero-copy, writable),
flush against np.fromfile, a budget smaller than the array, typed errors, and no view
outliving its memory."""

import errno
import os

import numpy as np
import pytest
import udax

MIB = 1 << 20


@pytest.fixture
def words(tmp_path):
    """A 16 MiB file of pseudo-random uint64 and its contents."""
    path = tmp_path / "words.u64"
    data = np.random.default_rng(1).integers(0, 2**63, size=2 * MIB, dtype=np.uint64)
    data.tofile(path)
    return path, data


def test_numpy_sum_reads_the_file_zero_copy(words):
    path, data = words
    with udax.map_file(path) as m:
        assert len(m) == data.nbytes
        a = np.frombuffer(m, dtype=np.uint64)
        assert a.ctypes.data == m.address  # the mapping itself, not a copy
        assert a.flags.writeable
        assert a.sum() == data.sum()
        assert m.stats()["read_faults"] > 0
        del a


@pytest.mark.parametrize("granularity", ["4k", "64k", "2m", 4096])
def test_in_place_sort_and_flush_match_fromfile(words, granularity):
    path, data = words
    m = udax.map_file(path, granularity=granularity)
    a = np.frombuffer(m, dtype=np.uint64)
    a.sort()
    m.flush()
    assert m.stats()["pages_written_back"] > 0
    assert np.array_equal(np.fromfile(path, dtype=np.uint64), np.sort(data))
    del a
    m.close()
    assert m.closed


def test_memoryview_is_writable_and_reaches_the_file(tmp_path):
    path = tmp_path / "mv.img"
    with udax.map_file(path, size="1m", create=True) as m:
        view = memoryview(m)
        assert not view.readonly and view.nbytes == MIB and view.format == "B"
        view[4096:4101] = b"hello"
        assert m.stats()["write_faults"] == 1
        view.release()
    assert path.read_bytes()[4096:4101] == b"hello"


def test_a_budget_smaller_than_the_array(words):
    path, data = words
    budget = 2 * MIB  # an eighth of the array
    with udax.map_file(path, budget=budget, granularity="4k", threads=2) as m:
        a = np.frombuffer(m, dtype=np.uint64)
        assert a.sum() == data.sum()
        a[::512] += 1  # one write per page: dirty pages evicted = written back
        stats = m.stats()
        assert stats["evictions"] > 0 and stats["evicted_dirty"] > 0
        assert stats["resident_pages_peak"] <= budget // 4096 + 2
        m.flush()
        del a
    expected = data.copy()
    expected[::512] += 1
    assert np.array_equal(np.fromfile(path, dtype=np.uint64), expected)


def test_read_only_mappings_export_read_only_buffers(words):
    path, data = words
    with udax.map_file(path, read_only=True) as m:
        assert m.read_only
        a = np.frombuffer(m, dtype=np.uint64)
        assert not a.flags.writeable
        assert a[:1000].sum() == data[:1000].sum()
        with pytest.raises(ValueError):
            a.setflags(write=True)
        view = memoryview(m)
        assert view.readonly
        with pytest.raises(TypeError):
            view[0] = 1
        view.release()
        del a
        with pytest.raises(udax.ReadOnlyError):
            m.prefault(0, 4096, write=True)


def test_close_refuses_while_views_exist_and_views_keep_the_mapping(words):
    path, data = words
    m = udax.map_file(path)
    a = np.frombuffer(m, dtype=np.uint64)
    with pytest.raises(udax.BusyError) as busy:
        m.close()
    assert busy.value.errno == errno.EBUSY
    assert not m.closed
    del m  # the array holds the mapping: its memory stays mapped
    assert a[-1] == data[-1]
    del a


def test_a_closed_mapping_refuses_everything(words):
    path, _ = words
    m = udax.map_file(path)
    m.close()
    m.close()  # twice: nothing
    for call in (lambda: memoryview(m), m.flush, m.stats, lambda: np.frombuffer(m, np.uint8)):
        with pytest.raises(udax.ClosedError):
            call()
    assert "closed" in repr(m)


def test_errors_are_typed(tmp_path, words):
    path, data = words
    with pytest.raises(udax.NotFound) as missing:
        udax.map_file(tmp_path / "nothing.img")
    assert isinstance(missing.value, OSError) and missing.value.errno == errno.ENOENT
    assert "nothing.img" in str(missing.value)
    with pytest.raises(udax.NotFound):
        udax.map_file(tmp_path / "nothing.img", read_only=True)
    bad = [
        dict(size=1000),                 # not a multiple of 4096
        dict(size=data.nbytes * 2),      # past the end of the file
        dict(size=0),                    # empty
        dict(granularity="3k"),
        dict(granularity="fast"),
        dict(granularity=4 * MIB),
        dict(budget=4096),               # under the 64 KiB minimum
    ]
    for kwargs in bad:
        with pytest.raises(udax.InvalidArgument) as invalid:
            udax.map_file(path, **kwargs)
        assert invalid.value.errno == errno.EINVAL, kwargs
    with pytest.raises(TypeError):
        udax.map_file(path, budget=1.5)
    with pytest.raises(udax.Error):
        udax.map_file(tmp_path)  # a directory
    assert issubclass(udax.NotFound, udax.Error) and issubclass(udax.Error, OSError)
    assert os.path.exists(path)


def test_the_default_granularity_is_the_librarys(words):
    """2 MiB without a budget; under one, a random read reads 4 KiB (a 2 MiB fault
    under a small budget would evict half of it to read the range in)."""
    path, data = words
    with udax.map_file(path) as m:
        a = np.frombuffer(m, dtype=np.uint64)
        assert a[5 * 512 + 7] == data[5 * 512 + 7]
        assert m.stats()["huge_faults"] == 1
        del a
    with udax.map_file(path, budget=4 * MIB) as m:
        a = np.frombuffer(m, dtype=np.uint64)
        assert a[5 * 512 + 7] == data[5 * 512 + 7]
        stats = m.stats()
        assert (stats["read_faults"], stats["huge_faults"], stats["fault_around_pages"]) == (1, 0, 0)
        del a


def test_read_ahead_can_be_turned_off(words):
    """A sequential read at 4 KiB is read ahead by default (most pages never fault);
    with read_ahead=False every page is its own read fault."""
    path, data = words
    pages = 64
    for read_ahead in (False, True):
        with udax.map_file(path, granularity="4k", read_ahead=read_ahead) as m:
            a = np.frombuffer(m, dtype=np.uint64)
            assert all(a[p * 512] == data[p * 512] for p in range(pages))
            stats = m.stats()
            del a
        if read_ahead:
            assert stats["read_ahead_ranges"] > 0, stats
        else:
            assert (stats["read_faults"], stats["read_ahead_ranges"]) == (pages, 0), stats
