"""Which replicas to blame when weight checksums disagree (the two-rank end-to-end case is in test_distributed)."""

from turnout.train.replicas import odd_ranks


def test_odd_ranks():
    assert odd_ranks([7, 7, 7, 7]) == []
    assert odd_ranks([7, 7, 9, 7]) == [2]
    assert odd_ranks([7, 9]) == [0, 1]  # two replicas that disagree: either may be the corrupted one
    assert odd_ranks([7, 7, 9, 9]) == [0, 1, 2, 3]  # no strict majority
    assert odd_ranks([7, 8, 9]) == [0, 1, 2]


def test_split_weights_are_compared_only_among_the_ranks_holding_the_same_experts():
    """World 4 as (dp 2, ep 2): ranks 0 and 2 hold experts 0-3, ranks 1 and 3 experts 4-7. Their split-weight
    checksums differ by design; only a difference within a column counts."""
    from turnout.train.replicas import ReplicaCheck

    check = ReplicaCheck.__new__(ReplicaCheck)
    check.peers = [[0, 2], [1, 3]]
    assert check.odd([(5, 10), (5, 20), (5, 10), (5, 20)]) == []
    assert check.odd([(5, 10), (5, 20), (5, 10), (5, 21)]) == [1, 3]  # two copies disagree: either may be bad
    assert check.odd([(5, 10), (6, 20), (5, 10), (5, 20)]) == [1]  # the replicated weights: rank 1 is the odd one
    check.peers = []  # no expert parallelism: the split column is all zeros
    assert check.odd([(5, 0), (5, 0), (9, 0)]) == [2]
