"""Synthetic order tables with every column kind a user's CSV brings, and a label that can be learned.

    pipeline generate --rows 100000 --out orders.csv [--task classification|regression] [--seed 0] [--sample 0] [--drift 0]

Each row is one online order. The label comes from a hidden score that every kind of column moves, so a model
only reaches the best attainable score by using all of them; noise keeps that best score well below perfect:

    order_id         str    unique per row ("ORD-00000042"); carries nothing: a model memorising it overfits
    order_date       str    "YYYY-MM-DD" in 2022-2024; seasonal effect (higher in December, lower in summer)
                            and a weekend effect, visible only to a model that reads the string as a date
    customer_age     float  years; 8% missing; a hump-shaped effect (middle ages score highest)
    basket_value     float  currency, log-normal; 5% missing; effect linear in its logarithm
    n_items          int    items in the basket (Poisson); a small linear effect
    channel          str    web / app / store / phone; 3% missing; one effect per value
    region           str    six regions; one effect per value
    product_code     str    "P01234"-style codes, a few thousand of them with Zipf-like frequencies; one
                            effect per code, so rare codes have to be shrunk towards zero
    is_member        bool   loyalty-programme member; a fixed effect
    review           str    short review built from word lists; 10% missing; its sentiment words follow a
                            hidden satisfaction that nothing else carries: only a model reading words gets it
    outcome          str    (classification) "returned" (~15%), "kept" (~55%) or "reordered" (~30%): the score
                            cut at two thresholds after logistic noise
    order_margin     float  (regression) the profit on the order, the score on a currency scale plus Gaussian
                            noise (negative for some orders; R² ceiling ~0.8)

The table is a pure function of its arguments (``rows``, ``seed``, ``task``, ``sample``, ``drift``). numpy
does the work column by column: 100k rows take about a second. Large tables are generated and written 250,000
rows at a time (memory stays a few hundred MB at any size: ``--rows 10000000 --out orders/`` writes 40 Parquet
shards); ``--sample`` draws new rows of the same table and ``--drift`` moves them, for the drift monitor.
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

TASKS = ("classification", "regression")
# The label column of each task.
LABELS = {"classification": "outcome", "regression": "order_margin"}
CLASSES = ("returned", "kept", "reordered")

CHANNELS = np.array(["web", "app", "store", "phone"])
CHANNEL_SHARE = [0.45, 0.3, 0.15, 0.1]
CHANNEL_EFFECT = np.array([0.0, 0.35, -0.25, -0.6])
REGIONS = np.array(["north", "south", "east", "west", "central", "islands"])
REGION_EFFECT = np.array([0.2, -0.2, 0.1, 0.0, 0.3, -0.5])
N_PRODUCT_CODES = 3000
# Per unit of drift, the log-change of each channel's share (web, app, store, phone): more phone orders.
CHANNEL_DRIFT = np.array([-0.5, 0.0, 0.0, 1.0])
CHUNK_ROWS = 250_000  # rows generated at a time by iter_chunks: a few hundred MB of frame
CUT_ROWS = 100_000    # rows of the undrifted table that fixes a concept's label thresholds

# Review vocabulary. Sentiment words follow the hidden satisfaction; the rest are neutral filler that every
# review draws from alike, so they carry no signal (as in real reviews, most words say nothing).
POSITIVE = np.array(["great", "excellent", "love", "perfect", "fast", "recommend", "happy", "sturdy",
                     "beautiful", "comfortable", "works", "amazing", "quality", "worth", "pleased"])
NEGATIVE = np.array(["broken", "late", "poor", "refund", "cheap", "disappointed", "missing", "wrong",
                     "flimsy", "damaged", "useless", "awful", "slow", "return", "leaking"])
NEUTRAL = np.array(["the", "it", "was", "and", "item", "order", "box", "arrived", "size", "colour", "product",
                    "bought", "for", "my", "this", "a", "very", "after", "week", "use", "again", "delivery",
                    "package", "gift", "price"])
MAX_WORDS = 9

START_DATE = np.datetime64("2022-01-01")
N_DAYS = 3 * 365 + 1  # 2022-01-01 .. 2024-12-31 (2024 is a leap year)


def generate_table(rows: int, seed: int | Sequence[int] = 0, task: str = "classification",
                   concept_seed: int | None = None, drift: float = 0.0, first_id: int = 0) -> pd.DataFrame:
    """A synthetic order table of ``rows`` rows with a learnable, noisy label.

    Args:
        rows: number of orders (rows) to generate; at least 1.
        seed: seed of the random generator; the same ``(rows, seed, task)`` always gives the same table.
        task: ``"classification"`` (label ``outcome``, three imbalanced classes) or ``"regression"`` (label
            ``order_margin``, a float).
        concept_seed: the seed of what the table means, ``seed`` by default: which product code has which name
            and effect, and where the label's thresholds lie (:func:`_label_cuts`, from an undrifted table of
            the concept). Tables drawn with other seeds and the same concept are samples of one distribution
            (the chunks of :func:`iter_chunks`).
        drift: how far the rows move from the concept's distribution, 0 for none: older customers (+10 years
            per unit), bigger baskets (+0.5 on the log scale), more phone orders and fewer web ones, and less
            satisfied customers (-0.5 standard deviations: more negative reviews, more returns). The label keeps
            the concept's thresholds, so its distribution moves too.
        first_id: the number of the first order id (ids are ``first_id`` .. ``first_id + rows - 1``, shuffled).

    Returns:
        One row per order: the feature columns described in the module docstring, in that order, then the
        label. Missing values are NaN in numeric columns and None in string columns.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    if concept_seed is None:
        if np.ndim(seed):
            raise ValueError("a seed sequence needs concept_seed")
        concept_seed = int(seed)
    return _generate(rows, seed, task, concept_seed, drift, first_id, _label_cuts(concept_seed, task))[0]


def _generate(rows: int, seed: int | Sequence[int], task: str, concept_seed: int, drift: float,
              first_id: int, cuts: tuple[float, ...] | None) -> tuple[pd.DataFrame, tuple[float, ...]]:
    """The table of :func:`generate_table` and the label's constants it used (the score's mean and standard
    deviation, and for classification its two thresholds): ``cuts``, or the table's own when None."""
    rng = np.random.default_rng(seed)

    # Shuffled numbers, so that the ID's order says nothing about the row either.
    order_id = np.char.add("ORD-", np.char.zfill((rng.permutation(rows) + first_id).astype(str), 8))

    day = rng.integers(0, N_DAYS, rows)
    dates = START_DATE + day.astype("timedelta64[D]")
    day_of_year = (dates - dates.astype("datetime64[Y]")).astype(int)
    weekday = (day + 5) % 7  # 2022-01-01 was a Saturday; 0 is Monday
    season = np.cos(2 * np.pi * (day_of_year - 350) / 365.25)  # +1 in mid December, -1 in mid June
    order_date = np.datetime_as_string(dates, unit="D")

    age = np.clip(rng.normal(42 + 10 * drift, 14, rows), 18, 90).round()
    basket = np.exp(rng.normal(3.8 + 0.5 * drift, 0.8, rows)).round(2)
    n_items = rng.poisson(2.0, rows) + 1
    share = np.asarray(CHANNEL_SHARE) * np.exp(drift * CHANNEL_DRIFT)
    channel_idx = rng.choice(len(CHANNELS), rows, p=share / share.sum())
    region_idx = rng.integers(0, len(REGIONS), rows)
    # Zipf-like frequencies: a few codes are bought all the time, most are rare.
    code_weight = 1.0 / np.arange(1, N_PRODUCT_CODES + 1) ** 0.9
    code_idx = rng.choice(N_PRODUCT_CODES, rows, p=code_weight / code_weight.sum())
    # A separate generator for the per-code effects: the same code has the same effect at any table size.
    code_effect = np.random.default_rng([concept_seed, 1]).normal(0, 0.7, N_PRODUCT_CODES)
    # Their names from the concept's generator too: every sample of the concept calls a code alike.
    names = np.random.default_rng([concept_seed, 2]).permutation(N_PRODUCT_CODES)
    product_code = np.char.add("P", np.char.zfill(names[code_idx].astype(str), 5))
    is_member = rng.random(rows) < 0.35
    satisfaction = rng.normal(-0.5 * drift, 1, rows)

    score = (
        0.7 * season
        + 0.25 * (weekday >= 5)
        - 0.8 * ((age - 45) / 20) ** 2
        + 0.5 * (np.log(basket) - 3.8)
        + 0.08 * (n_items - 3)
        + CHANNEL_EFFECT[channel_idx]
        + REGION_EFFECT[region_idx]
        + code_effect[code_idx]
        + 0.4 * is_member
        + 0.9 * satisfaction
    )

    review = _reviews(rng, satisfaction)

    # Missing values are drawn after the score, so a missing value hides information rather than being one.
    age[rng.random(rows) < 0.08] = np.nan
    basket[rng.random(rows) < 0.05] = np.nan
    channel = CHANNELS[channel_idx].astype(object)
    channel[rng.random(rows) < 0.03] = None
    review[rng.random(rows) < 0.10] = None

    frame = pd.DataFrame({
        "order_id": order_id,
        "order_date": order_date,
        "customer_age": age,
        "basket_value": basket,
        "n_items": n_items,
        "channel": channel,
        "region": REGIONS[region_idx],
        "product_code": product_code,
        "is_member": is_member,
        "review": review,
    })
    if cuts is None:
        mean, spread = score.mean(), (score - score.mean()).std()
    else:
        mean, spread = cuts[:2]
    centred = score - mean
    if task == "classification":
        noisy = centred + rng.logistic(0, 0.3, rows)
        low, high = np.quantile(noisy, [0.15, 0.70]) if cuts is None else cuts[2:]
        frame[LABELS[task]] = np.array(CLASSES)[np.digitize(noisy, [low, high])]
        used = (mean, spread, low, high)
    else:
        frame[LABELS[task]] = (12 + 8 * centred + rng.normal(0, 8 * 0.5 * spread, rows)).round(2)
        used = (mean, spread)
    return frame, tuple(float(v) for v in used)


@functools.lru_cache(maxsize=8)
def _label_cuts(concept_seed: int, task: str) -> tuple[float, ...]:
    """The label's constants of a concept, from a ``CUT_ROWS``-row table of it (seed ``concept_seed``, no
    drift): the score's mean and standard deviation and, for classification, the two thresholds of the noisy
    score that leave ~15% of its rows below (returned) and ~30% above (reordered)."""
    return _generate(CUT_ROWS, concept_seed, task, concept_seed, 0.0, 0, None)[1]


def _reviews(rng: np.random.Generator, satisfaction: np.ndarray) -> np.ndarray:
    """One review per row: 3 to 9 words, each a sentiment word with probability 0.6 (positive with probability
    sigmoid(2 * satisfaction)) and a neutral word otherwise. Returns an object array of strings."""
    rows = len(satisfaction)
    n_words = rng.integers(3, MAX_WORDS + 1, rows)
    is_sentiment = rng.random((rows, MAX_WORDS)) < 0.6
    is_positive = rng.random((rows, MAX_WORDS)) < 1 / (1 + np.exp(-2.0 * satisfaction))[:, None]
    words = np.where(
        is_sentiment,
        np.where(is_positive, POSITIVE[rng.integers(0, len(POSITIVE), (rows, MAX_WORDS))],
                 NEGATIVE[rng.integers(0, len(NEGATIVE), (rows, MAX_WORDS))]),
        NEUTRAL[rng.integers(0, len(NEUTRAL), (rows, MAX_WORDS))],
    )
    # Every review has at least three words; a Python join over rows is faster than numpy string ops here.
    return np.array([" ".join(w[:n]) for w, n in zip(words.tolist(), n_words.tolist(), strict=True)],
                    dtype=object)


def iter_chunks(rows: int, seed: int = 0, task: str = "classification", drift: float = 0.0, sample: int = 0,
                chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """The table of ``rows`` rows as frames of at most ``chunk_rows`` rows, one generated at a time: samples of
    one concept (``seed``), order ids unique over the whole table. ``sample`` numbers independent draws of the
    same concept (a training table and the window a monitor compares with it); ``drift`` moves a draw's rows
    (see :func:`generate_table`). The first chunk of sample 0 is ``generate_table(n, seed, drift=drift)``
    itself; chunk ``i`` of sample ``s`` draws with the seed ``[seed, i, s]``."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    for i, start in enumerate(range(0, rows, chunk_rows)):
        draw = seed if i == 0 and sample == 0 else [seed, i, sample]
        yield generate_table(min(chunk_rows, rows - start), seed=draw, task=task, concept_seed=seed, drift=drift,
                             first_id=start)


def write_table(frames: pd.DataFrame | Iterator[pd.DataFrame], out: str | Path) -> Path:
    """Write a frame, or the frames of an iterator one after another, as one CSV or Parquet file (by the
    extension of ``out``: ``.csv``, ``.parquet``, ``.pq``) or, when ``out`` ends with ``/`` or is a directory,
    as Parquet shards ``part-00000.parquet``, ... (one per frame). Written under a temporary name and renamed:
    an interrupted run leaves no half table at ``out``."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(out)
    shards = str(out).endswith(("/", os.sep)) or path.is_dir()
    suffix = path.suffix.lower()
    if not shards and suffix not in {".csv", ".parquet", ".pq"}:
        raise ValueError(f"{path}: unsupported extension {path.suffix!r}; use .csv or .parquet, or a folder/")
    if isinstance(frames, pd.DataFrame):
        frames = iter([frames])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    if shards:
        tmp.mkdir(exist_ok=True)
        for old in tmp.glob("*.parquet"):
            old.unlink()
        for i, frame in enumerate(frames):
            frame.to_parquet(tmp / f"part-{i:05d}.parquet", index=False)
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("part-*.parquet"):  # a previous, larger table's shards would join this one
            old.unlink()
        for part in sorted(tmp.glob("*.parquet")):
            part.replace(path / part.name)
        tmp.rmdir()
        return path
    writer, schema = None, None
    try:
        for i, frame in enumerate(frames):
            if suffix == ".csv":
                frame.to_csv(tmp, index=False, header=i == 0, mode="w" if i == 0 else "a")
                continue
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_table(table.cast(schema))  # a chunk whose column happens to be all missing
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """``pipeline generate --rows N --out PATH [--task ...] [--seed ...]``: write one table."""
    parser = argparse.ArgumentParser(prog="pipeline generate", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, help="number of rows (of images with --images shapes)")
    parser.add_argument("--out", required=True, help="output file: .csv or .parquet (a folder with --images)")
    parser.add_argument("--images", choices=("digits", "shapes"),
                        help="write an image folder instead (<out>/<class>/*.png): scikit-learn's 1,797 digits "
                             "(8x8 grey), or --rows synthetic shapes (circle, square, triangle, cross) with noise")
    parser.add_argument("--size", type=int, default=64, help="--images shapes: width and height in pixels")
    parser.add_argument("--text", action="store_true",
                        help="write the support-ticket text table instead (message, channel; label team: "
                             "pipeline.generate_text)")
    parser.add_argument("--task", choices=TASKS, default="classification",
                        help=f"label kind: classification ({LABELS['classification']}) or regression "
                             f"({LABELS['regression']})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--sample", type=int, default=0,
                        help="another draw of the same table (same --seed, new rows), e.g. a window to monitor")
    parser.add_argument("--drift", type=float, default=0.0,
                        help="a drifted sample of the same table (same --seed): older customers, bigger baskets, "
                             "more phone orders, less satisfied reviews and more returns; 0 = none, 1 = strong")
    args = parser.parse_args(argv)
    if args.images:
        return _write_images(parser, args)
    if args.rows is None or args.rows < 1:
        parser.error("--rows must be at least 1")
    if args.text:
        from pipeline.generate_text import main as text_main

        return text_main(["--rows", str(args.rows), "--out", args.out, "--seed", str(args.seed)])
    try:
        path = write_table(iter_chunks(args.rows, args.seed, args.task, args.drift, args.sample), args.out)
    except ValueError as exc:
        parser.error(str(exc))
    drifted = f", drift {args.drift:g}" if args.drift else ""
    print(f"wrote {args.rows:,} rows ({args.task}, label {LABELS[args.task]!r}{drifted}) to {path}")
    return 0


def _write_images(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from pipeline.images.generate import write_digits, write_shapes

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out {out}: the folder is not empty")
    if args.images == "digits":
        write_digits(out)
        print(f"wrote scikit-learn's 1,797 digits as PNG files to {out}/<digit>/")
        return 0
    if args.rows is None or args.rows < 4:
        parser.error("--images shapes: --rows must be at least 4 (one image per class)")
    if not 8 <= args.size <= 1024:
        parser.error("--size must be between 8 and 1024")
    write_shapes(out, args.rows, args.size, seed=args.seed)
    print(f"wrote {args.rows:,} {args.size}x{args.size} shape images to {out}/<shape>/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
