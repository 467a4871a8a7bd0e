import csv

import pytest


def test_manifest_lists_every_shard(dataset):
    names = (dataset / "MANIFEST").read_text().split()
    assert sorted(p.name for p in (dataset / "shards").iterdir()) == [
        n.split("/")[1] for n in names
    ]


@pytest.mark.parametrize("shard", range(12))
def test_labels_are_balanced(dataset, shard):
    with open(dataset / f"shards/part-{shard:02d}.csv") as fh:
        labels = [int(row["label"]) for row in csv.DictReader(fh)]
    assert 0.45 < sum(labels) / len(labels) < 0.55
