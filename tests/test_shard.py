"""Work units (blockprune.search.shard): hand-computed cases of the cuts."""

import pytest

from blockprune.search import shard
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


class FakeTask:
    """What the planner reads of a task: name, kind, samples and their requests."""

    def __init__(self, name, lengths, kind="mc"):
        from blockprune.tasks.request import Request

        self.name, self.kind = name, kind
        self.requests = [Request(tuple(range(3, 3 + n)), 1) for n in lengths]
        self.request_sample = list(range(len(lengths)))
        self.n = len(lengths)


@pytest.fixture(scope="module")
def engine():
    from conftest import tiny_model

    from blockprune.engine import Engine

    return Engine(tiny_model("llama", layers=4), pack=False)


def test_units_split_samples_into_token_bins_and_keep_the_trie_whole(engine):
    task = FakeTask("t", [30, 10, 20, 25])  # bins of 2: 30->0, 25->1, 20->1, 10->0 -> {0: [0, 1], 1: [2, 3]}
    bins = {"t": shard.sample_bins([30, 10, 20, 25], 2)}
    assert bins["t"] == [0, 0, 1, 1]
    sets = [(1,), (2,), (1, 2)]
    units = shard.plan_units(engine, [(task, sets, None)], 2, 256, bins)
    assert [(u.samples, u.home) for u in units] == [([0, 1], 0), ([2, 3], 1)]
    for u in units:
        assert sorted(u.sets) == sorted(sets)  # every unit runs the whole trie: no prefix twice
        # masks 1011, 1101, 1001 on 4 blocks: kept prefixes per block 1 + 1 + 1 + 3 = 6 rows per request
        assert u.cost == 6 * sum([30, 10, 20, 25][i] for i in u.samples)
    # one worker: one unit of every sample, stored as whole records (samples None)
    one = shard.plan_units(engine, [(task, sets, None)], 1, 256, {"t": [0, 0, 0, 0]})
    assert len(one) == 1 and one[0].samples is None and one[0].req_ids == [0, 1, 2, 3]
    # racing asks for some samples: a unit per bin that has any, parts
    some = shard.plan_units(engine, [(task, sets, [1, 3])], 2, 256, bins)
    assert [(u.samples, u.home) for u in some] == [([1], 0), ([3], 1)]


def test_a_unit_above_a_workers_share_is_cut_by_sets_not_scattered(engine):
    task = FakeTask("t", [40])  # one sample, two workers: the only unit is the whole step
    sets = [(0,), (1,), (2,), (3,)]
    units = shard.plan_units(engine, [(task, sets, None)], 2, 256, {"t": [0]})
    assert all(u.samples is None for u in units)
    # trie order 1110, 1101, 1011, 0111 (1 + 2 + 3 + 3 = 9 rows): 2 workers -> at most ceil(9 / 2) = 5
    # rows per run. 1110 + 1101 = 3 + 1 = 4, + 1011 (3 more: differs from block 1 on) = 7 > 5: cut at
    # 1101|1011 (1 shared block, vs 2 at 1110|1101). 1011 + 0111 = 3 + 3 = 6 > 5: apart.
    assert [u.sets for u in units] == [[(3,), (2,)], [(1,)], [(0,)]]
    assert [u.cost for u in units] == [4 * 40, 3 * 40, 3 * 40]


def test_placement_of_workers_on_gpus_and_cpus():
    from blockprune.search.cluster import ClusterError, placement

    # 8 GPUs on 2 machines: one worker per GPU, Ray gives each its own (CUDA_VISIBLE_DEVICES)
    assert placement({"GPU": 8.0, "CPU": 64.0}, 2, None, None) == (8, True, None)
    assert placement({"GPU": 8.0, "CPU": 64.0}, 2, 3, "cuda") == (3, True, None)
    # --device cpu on a GPU cluster: CPU workers, cores split
    assert placement({"GPU": 8.0, "CPU": 64.0}, 2, 4, "cpu") == (4, False, 16)
    # this 2-core machine: 2 workers x 1 thread; by default one worker per machine with every core
    assert placement({"CPU": 2.0}, 1, 2, None) == (2, False, 1)
    assert placement({"CPU": 2.0}, 1, None, None) == (1, False, 2)
    assert placement({"CPU": 7.0}, 1, 2, None) == (2, False, 3)
    with pytest.raises(ClusterError, match="has 2 GPU"):
        placement({"GPU": 2.0, "CPU": 16.0}, 1, 4, None)
    with pytest.raises(ClusterError, match="has 2 CPU"):
        placement({"CPU": 2.0}, 1, 3, None)


def test_without_the_flags_ray_is_never_imported(tiny_dir, jsonl_tasks, tmp_path):
    import subprocess
    import sys

    code = ("import sys; from blockprune import cli; "
            f"rc = cli.main(['search', '--model', {str(tiny_dir)!r}, '--task', {'jsonl:' + str(jsonl_tasks / 'mc.jsonl')!r}, "
            f"'--method', 'given', '--sets', '1;2,3', '--device', 'cpu', '--no-progress', '--no-latency', "
            f"'--out', {str(tmp_path / 'run')!r}]); "
            "assert rc == 0, rc; assert 'ray' not in sys.modules, 'ray was imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-1500:]
