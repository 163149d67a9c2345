"""Which replicas to blame when weight checksums disagree (the two-rank end-to-end case is in test_distributed)."""

from turnout.train.replicas import odd_ranks


def test_odd_ranks():
    assert odd_ranks([7, 7, 7, 7]) == []
    assert odd_ranks([7, 7, 9, 7]) == [2]
    assert odd_ranks([7, 9]) == [0, 1]  # two replicas that disagree: either may be the corrupted one
    assert odd_ranks([7, 7, 9, 9]) == [0, 1, 2, 3]  # no strict majority
    assert odd_ranks([7, 8, 9]) == [0, 1, 2]
