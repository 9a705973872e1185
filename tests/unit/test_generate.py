"""pipeline.generate: the synthetic order table is deterministic, has every column kind, a learnable label."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.generate import CLASSES, LABELS, NEGATIVE, POSITIVE, generate_table, iter_chunks, main, write_table

FEATURES = ["order_id", "order_date", "customer_age", "basket_value", "n_items", "channel", "region",
            "product_code", "is_member", "review"]


@pytest.fixture(scope="module")
def orders() -> pd.DataFrame:
    return generate_table(20_000, seed=3)


@pytest.fixture(scope="module")
def margins() -> pd.DataFrame:
    return generate_table(20_000, seed=3, task="regression")


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_same_seed_same_table_other_seed_other_table(task):
    a, b = generate_table(500, seed=7, task=task), generate_table(500, seed=7, task=task)
    pd.testing.assert_frame_equal(a, b)
    c = generate_table(500, seed=8, task=task)
    assert not a[LABELS[task]].equals(c[LABELS[task]])
    assert not a["review"].equals(c["review"])


@pytest.mark.parametrize(("task", "rows"),
                         [("classification", 1), ("classification", 37), ("regression", 1000)])
def test_shape_and_columns(task, rows):
    frame = generate_table(rows, task=task)
    assert list(frame.columns) == [*FEATURES, LABELS[task]]
    assert len(frame) == rows


def test_column_kinds(orders):
    rows = len(orders)
    assert orders["order_id"].is_unique
    assert pd.api.types.is_bool_dtype(orders["is_member"]) and 0.2 < orders["is_member"].mean() < 0.5
    dates = pd.to_datetime(orders["order_date"], format="%Y-%m-%d")
    assert dates.min() >= pd.Timestamp("2022-01-01") and dates.max() <= pd.Timestamp("2024-12-31")
    assert dates.dt.month.nunique() == 12
    assert 2 <= orders["channel"].nunique() <= 4 and orders["region"].nunique() == 6
    # High cardinality: thousands of product codes, most of them rare, a few frequent.
    counts = orders["product_code"].value_counts()
    assert counts.size > 1500 and counts.iloc[0] > 50 * counts.median()
    words = orders["review"].dropna().str.split().str.len()
    assert words.min() >= 3 and words.max() <= 9 and words.mean() >= 3
    assert orders["review"].nunique() > rows / 2
    for col in ("customer_age", "basket_value", "n_items"):
        assert pd.api.types.is_numeric_dtype(orders[col])


def test_missing_values_where_documented(orders):
    missing = orders.isna().mean()
    for col, share in {"customer_age": 0.08, "basket_value": 0.05, "channel": 0.03, "review": 0.10}.items():
        assert share / 2 < missing[col] < share * 2, col
    complete = ["order_id", "order_date", "n_items", "region", "product_code", "is_member",
                LABELS["classification"]]
    assert missing[complete].eq(0).all()


def test_classes_are_imbalanced(orders):
    shares = orders[LABELS["classification"]].value_counts(normalize=True)
    assert set(shares.index) == set(CLASSES)
    assert shares["kept"] > shares["reordered"] > shares["returned"] > 0.1


def test_csv_round_trip_keeps_kinds(orders, tmp_path):
    path = tmp_path / "orders.csv"
    orders.head(300).to_csv(path, index=False)
    back = pd.read_csv(path)
    assert back["is_member"].dtype == bool
    assert back["order_date"].dtype != "datetime64[ns]"  # a date string stays a string in a CSV
    assert back["customer_age"].isna().sum() == orders.head(300)["customer_age"].isna().sum()


def _engineered(frame: pd.DataFrame) -> pd.DataFrame:
    """Features a model could learn from: date parts, sentiment word counts, the other columns as they are."""
    dates = pd.to_datetime(frame["order_date"])
    words = frame["review"].fillna("").str.split()
    positive, negative = set(POSITIVE), set(NEGATIVE)
    return pd.DataFrame({
        "day_of_year": dates.dt.dayofyear, "weekday": dates.dt.weekday,
        "positive": words.map(lambda ws: sum(w in positive for w in ws)),
        "negative": words.map(lambda ws: sum(w in negative for w in ws)),
        "customer_age": frame["customer_age"], "basket_value": frame["basket_value"],
        "n_items": frame["n_items"],
        "channel": frame["channel"].astype("category"), "region": frame["region"].astype("category"),
        "is_member": frame["is_member"].astype(int),
    })


def test_classification_label_is_learnable_but_not_perfect(orders):
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y = _engineered(orders), orders[LABELS["classification"]]
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", max_iter=60, random_state=0)
    model.fit(x[:15_000], y[:15_000])
    accuracy = model.score(x[15_000:], y[15_000:])
    baseline = (y[15_000:] == y[:15_000].mode()[0]).mean()
    assert accuracy > baseline + 0.08
    assert accuracy < 0.9  # noisy by design


def test_regression_label_is_learnable_but_not_perfect(margins):
    from sklearn.ensemble import HistGradientBoostingRegressor

    x, y = _engineered(margins), margins[LABELS["regression"]]
    model = HistGradientBoostingRegressor(categorical_features="from_dtype", max_iter=60, random_state=0)
    model.fit(x[:15_000], y[:15_000])
    r2 = model.score(x[15_000:], y[15_000:])
    assert 0.3 < r2 < 0.85


def test_words_and_season_carry_signal(margins):
    y = margins[LABELS["regression"]]
    words = margins["review"].fillna("").str.split()
    positive, negative = set(POSITIVE), set(NEGATIVE)
    sentiment = words.map(lambda ws: sum(w in positive for w in ws) - sum(w in negative for w in ws))
    assert np.corrcoef(sentiment, y)[0, 1] > 0.25
    month = pd.to_datetime(margins["order_date"]).dt.month
    assert y[month == 12].mean() > y[month.isin([6, 7])].mean() + 3
    # The ID carries nothing.
    id_number = margins["order_id"].str[4:].astype(int)
    assert abs(np.corrcoef(id_number, y)[0, 1]) < 0.05


@pytest.mark.parametrize(("task", "rows"), [("classification", 0), ("clustering", 10)])
def test_bad_arguments(task, rows):
    with pytest.raises(ValueError):
        generate_table(rows, task=task)


@pytest.mark.parametrize("name", ["orders.csv", "orders.parquet"])
def test_main_writes_by_extension(tmp_path, capsys, name):
    out = tmp_path / name
    assert main(["--rows", "50", "--out", str(out), "--task", "regression", "--seed", "2"]) == 0
    back = pd.read_csv(out) if name.endswith(".csv") else pd.read_parquet(out)
    assert len(back) == 50 and LABELS["regression"] in back.columns
    expected = generate_table(50, seed=2, task="regression")
    np.testing.assert_allclose(back[LABELS["regression"]], expected[LABELS["regression"]])
    assert "50 rows" in capsys.readouterr().out


def test_main_refuses_unknown_extension(tmp_path):
    with pytest.raises(SystemExit):
        main(["--rows", "5", "--out", str(tmp_path / "orders.xlsx")])


def _code_outcome(frame: pd.DataFrame, codes: pd.Index) -> pd.Series:
    """The mean outcome (returned -1, kept 0, reordered 1) of the orders of each of ``codes``."""
    rows = frame[frame["product_code"].isin(codes)]
    outcome = rows["outcome"].map({"returned": -1, "kept": 0, "reordered": 1})
    return outcome.groupby(rows["product_code"]).mean().reindex(codes)


def test_chunks_are_one_table_with_unique_ids():
    chunks = list(iter_chunks(2_500, seed=4, chunk_rows=1_000))
    assert [len(c) for c in chunks] == [1_000, 1_000, 500]
    pd.testing.assert_frame_equal(chunks[0], generate_table(1_000, seed=4))
    ids = pd.concat(chunks)["order_id"]
    assert ids.is_unique and sorted(ids.str[4:].astype(int)) == list(range(2_500))
    assert not chunks[1]["review"].reset_index(drop=True).equals(chunks[0]["review"].iloc[:1_000])


def test_chunks_and_samples_share_the_concept():
    """Chunks and other samples of one seed name and weigh the product codes alike and cut the label at the
    same thresholds; another seed is another concept."""
    first = pd.concat(iter_chunks(60_000, seed=5, chunk_rows=20_000), ignore_index=True)
    again = pd.concat(iter_chunks(60_000, seed=5, sample=1, chunk_rows=20_000), ignore_index=True)
    other = generate_table(60_000, seed=6)
    assert not first["order_date"].equals(again["order_date"])
    assert set(first["product_code"].value_counts().index[:10]) <= set(again["product_code"].value_counts().index[:20])
    assert not set(first["product_code"].value_counts().index[:20]) & set(other["product_code"].value_counts().index[:5])
    top = first["product_code"].value_counts().index[:30]
    same = np.corrcoef(_code_outcome(first, top), _code_outcome(again, top))[0, 1]
    assert same > 0.9, same
    for frame in (first, again):
        shares = frame["outcome"].value_counts(normalize=True)
        assert abs(shares["returned"] - 0.15) < 0.02 and abs(shares["reordered"] - 0.30) < 0.02


def test_drift_moves_features_and_label():
    base = pd.concat(iter_chunks(30_000, seed=2, sample=1, chunk_rows=10_000))
    moved = pd.concat(iter_chunks(30_000, seed=2, sample=1, drift=1.0, chunk_rows=10_000))
    assert moved["customer_age"].mean() - base["customer_age"].mean() > 7  # +10 years before clipping at 90
    assert np.log(moved["basket_value"]).mean() - np.log(base["basket_value"]).mean() == pytest.approx(0.5, abs=0.05)
    phone = [f["channel"].eq("phone").mean() for f in (base, moved)]
    assert phone[1] > 2 * phone[0]
    returned = [f["outcome"].eq("returned").mean() for f in (base, moved)]
    assert returned[1] > returned[0] + 0.03, returned  # less satisfied customers return more
    assert list(moved.columns) == list(base.columns) and moved["order_id"].is_unique


@pytest.mark.parametrize("name", ["orders.csv", "orders.parquet", "orders/"])
def test_write_table_streams_chunks(tmp_path, name):
    out = f"{tmp_path}/{name}"  # a trailing / asks for shards
    chunks = list(iter_chunks(2_100, seed=1, chunk_rows=1_000))
    chunks[2]["review"] = None  # a chunk whose text column is all missing still fits the first one's schema
    path = write_table(iter(chunks), out)
    if name.endswith("/"):
        assert sorted(p.name for p in path.iterdir()) == [f"part-{i:05d}.parquet" for i in range(3)]
        back = pd.read_parquet(path)
    else:
        back = pd.read_csv(path) if name.endswith(".csv") else pd.read_parquet(path)
    assert len(back) == 2_100 and list(back.columns) == list(chunks[0].columns)
    assert back["order_id"].tolist() == pd.concat(chunks)["order_id"].tolist()
    assert back["review"].iloc[2_000:].isna().all()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_shards_replace_a_previous_larger_table(tmp_path):
    out = f"{tmp_path}/orders/"
    write_table(iter_chunks(300, seed=0, chunk_rows=100), out)
    write_table(iter_chunks(150, seed=1, chunk_rows=100), out)
    assert sorted(p.name for p in (tmp_path / "orders").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert len(pd.read_parquet(out)) == 150


def test_write_table_leaves_nothing_when_interrupted(tmp_path):
    def broken():
        yield generate_table(100, seed=0)
        raise RuntimeError("generator failed")

    for name in ("orders.parquet", "orders.csv"):
        with pytest.raises(RuntimeError):
            write_table(broken(), tmp_path / name)
        assert not (tmp_path / name).exists()


def test_main_drift_and_sample(tmp_path, capsys):
    out = tmp_path / "window.parquet"
    assert main(["--rows", "300", "--out", str(out), "--seed", "2", "--sample", "1", "--drift", "0.5"]) == 0
    expected = pd.concat(iter_chunks(300, seed=2, sample=1, drift=0.5))
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected.reset_index(drop=True))
    assert "drift 0.5" in capsys.readouterr().out
