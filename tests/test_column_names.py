"""Real tables have columns named x, y, s, rank or score: none of them may collide with what alloop keeps
or writes. The names alloop uses internally while streaming (s, i, x) and the columns it adds to a query
file (rank, score) are each tried as the user's own feature column, through the whole cycle."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alloop.commands.ingest import ingest
from alloop.commands.init import init_run
from alloop.commands.query import OWN_COLUMNS, own_column, query
from alloop.io import tables

STREAM_KEYS = ("s", "i", "x")  # stream.TopRows' own arrays
RESERVED = (*STREAM_KEYS, *OWN_COLUMNS, "round", "time")


def _pool(folder, features, n=80, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(features)))
    df = pd.DataFrame({"id": np.arange(n), **{f: x[:, j] for j, f in enumerate(features)}})
    df.to_parquet(folder / "pool.parquet", index=False)
    return df, pd.Series(x @ np.linspace(1.0, -1.0, len(features)), index=df["id"])


@pytest.mark.parametrize("name", RESERVED)
@pytest.mark.parametrize("strategy", [None, "random", "greedy", "sld-topk"])
def test_a_feature_named_like_alloops_own_columns_goes_through_the_cycle(
    runs, tmp_path, name, strategy
):
    features = [name, "other"]
    df, truth = _pool(tmp_path, features)
    init_run("r", str(tmp_path / "pool.parquet"), s=1.0, train={"epochs": 1, "min_steps": 50})
    for _ in range(2):  # a cold start (greedy streaming), then the trained model's strategy
        rec = query("r", k=4, strategy=strategy)
        got = tables.read_table(rec["path"])
        rank, score = (own_column(c, {"id", *features, "target"}) for c in OWN_COLUMNS)
        assert list(got.columns) == ["id", rank, score, *features, "target"]
        assert list(got[rank]) == [1, 2, 3, 4]
        stored = df.set_index("id").loc[got["id"]]
        for f in features:  # the user's values, as stored, whatever the column is called
            np.testing.assert_array_equal(got[f].to_numpy(), stored[f].to_numpy())
        got["target"] = truth.loc[got["id"]].to_numpy()
        got.to_csv(tmp_path / "filled.csv", index=False)
        assert ingest("r", str(tmp_path / "filled.csv"))["added"] == 4


def test_own_column_names_never_collide():
    assert own_column("rank", {"id", "x"}) == "rank"
    assert own_column("rank", {"rank"}) == "alloop_rank"
    assert own_column("rank", {"rank", "alloop_rank", "alloop_rank_2"}) == "alloop_rank_3"
