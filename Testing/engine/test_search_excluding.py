"""search_excluding: a query never finds a row of its own group (internal duplicates)."""

import numpy as np
from MemorizationIndexLib.search.neighbours import exact_index, search_excluding


def test_own_group_never_found_and_other_copy_is():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(30, 8)).astype(np.float32)
    rows[20] = rows[3] + 0.01  # group 2 holds a copy of a group-0 row
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    groups = np.repeat([0, 1, 2], 10)
    sims, ids = search_excluding(exact_index(rows), rows, 5, groups, groups)
    assert not np.any(groups[ids] == groups[:, None])
    assert ids[3, 0] == 20 and ids[20, 0] == 3
    assert sims[3, 0] > 0.99


def test_rows_short_of_k_are_padded():
    rows = np.eye(4, dtype=np.float32)
    groups = np.array([0, 0, 0, 1])
    sims, ids = search_excluding(exact_index(rows), rows, 3, groups, groups)
    assert list(ids[0]) == [3, 3, 3]
    assert np.isneginf(sims[0, 1])
    assert set(ids[3]) <= {0, 1, 2}
