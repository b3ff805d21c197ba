"""Work units (blockprune.shard): hand-computed cases of the cuts."""

import numpy as np

from blockprune import shard
from blockprune.engine import trie_block_rows


def test_sample_bins_deal_largest_first_into_the_lightest_bin():
    # tokens 9, 7, 6, 5, 3 into 2 bins: 9->0, 7->1, 6->1 (7<9), 5->0 (9<13), 3->0 (14=13? no: 13<14 -> 1)
    # loads after each: [9,0] [9,7] [9,13] [14,13] [14,16]
    assert shard.sample_bins([5, 9, 3, 7, 6], 2) == [0, 0, 1, 1, 1]
    assert shard.sample_bins([4, 4, 4], 3) == [0, 1, 2]
    assert shard.sample_bins([1, 1], 4) == [0, 1]


def test_trie_order_puts_shared_prefixes_together():
    # on 4 blocks, keep-masks descending: (3,)=1110 > (2,)=1101 > (2,3)=1100 > (1,)=1011 > (0,)=0111
    assert shard.trie_order([(0,), (2, 3), (3,), (1,), (2,)], 4) == [(3,), (2,), (2, 3), (1,), (0,)]


def test_split_sets_cuts_where_the_least_prefix_is_shared():
    # 5 blocks; keep-masks A=11110 (4,), B=11101 (3,), C=10111 (1,), D=10110 (1,4), E=10101 (1,3)
    sets = shard.trie_order([(1, 3), (4,), (1,), (3,), (1, 4)], 5)
    assert sets == [(4,), (3,), (1,), (1, 4), (1, 3)]
    masks = shard.masks_of(sets, 5)
    # distinct kept prefixes per block: A..D 1+1+2+2+2 = 8, A..E 1+1+2+2+3 = 9
    assert trie_block_rows(masks[:4]) == 8 and trie_block_rows(masks) == 9
    # limit 8: A..D fit. Kept blocks shared across each cut: A|B 3, B|C 1, C|D 3, D|E 2 -> cut B|C,
    # so C, D, E (sharing 101..) stay together (1+0+1+1+2 = 5 rows) and only block 0 runs twice
    runs = shard.split_sets(sets, 5, 8)
    assert runs == [[(4,), (3,)], [(1,), (1, 4), (1, 3)]]
    assert trie_block_rows(shard.masks_of(runs[1], 5)) == 5
    assert shard.split_sets(sets, 5, 9) == [sets]
    # a limit below one set's rows gives one set per run, never an empty one
    assert shard.split_sets(sets, 5, 1) == [[s] for s in sets]
