"""Synthetic order tables with every column kind a user's CSV brings, and a label that can be learned.

    pipeline generate --rows 100000 --out orders.csv [--task classification|regression] [--seed 0]

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

The table is a pure function of ``rows``, ``seed`` and ``task``. numpy does the work column by column: 100k
rows take about a second.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

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


def generate_table(rows: int, seed: int = 0, task: str = "classification") -> pd.DataFrame:
    """A synthetic order table of ``rows`` rows with a learnable, noisy label.

    Args:
        rows: number of orders (rows) to generate; at least 1.
        seed: seed of the random generator; the same ``(rows, seed, task)`` always gives the same table.
        task: ``"classification"`` (label ``outcome``, three imbalanced classes) or ``"regression"`` (label
            ``order_margin``, a float).

    Returns:
        One row per order: the feature columns described in the module docstring, in that order, then the
        label. Missing values are NaN in numeric columns and None in string columns.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    rng = np.random.default_rng(seed)

    # Shuffled numbers, so that the ID's order says nothing about the row either.
    order_id = np.char.add("ORD-", np.char.zfill(rng.permutation(rows).astype(str), 8))

    day = rng.integers(0, N_DAYS, rows)
    dates = START_DATE + day.astype("timedelta64[D]")
    day_of_year = (dates - dates.astype("datetime64[Y]")).astype(int)
    weekday = (day + 5) % 7  # 2022-01-01 was a Saturday; 0 is Monday
    season = np.cos(2 * np.pi * (day_of_year - 350) / 365.25)  # +1 in mid December, -1 in mid June
    order_date = np.datetime_as_string(dates, unit="D")

    age = np.clip(rng.normal(42, 14, rows), 18, 90).round()
    basket = np.exp(rng.normal(3.8, 0.8, rows)).round(2)
    n_items = rng.poisson(2.0, rows) + 1
    channel_idx = rng.choice(len(CHANNELS), rows, p=CHANNEL_SHARE)
    region_idx = rng.integers(0, len(REGIONS), rows)
    # Zipf-like frequencies: a few codes are bought all the time, most are rare.
    code_weight = 1.0 / np.arange(1, N_PRODUCT_CODES + 1) ** 0.9
    code_idx = rng.choice(N_PRODUCT_CODES, rows, p=code_weight / code_weight.sum())
    # A separate generator for the per-code effects: the same code has the same effect at any table size.
    code_effect = np.random.default_rng([seed, 1]).normal(0, 0.7, N_PRODUCT_CODES)
    product_code = np.char.add("P", np.char.zfill(rng.permutation(N_PRODUCT_CODES)[code_idx].astype(str), 5))
    is_member = rng.random(rows) < 0.35
    satisfaction = rng.normal(0, 1, rows)

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
    centred = score - score.mean()
    if task == "classification":
        noisy = centred + rng.logistic(0, 0.3, rows)
        low, high = np.quantile(noisy, [0.15, 0.70])
        frame[LABELS[task]] = np.array(CLASSES)[np.digitize(noisy, [low, high])]
    else:
        frame[LABELS[task]] = (12 + 8 * centred + rng.normal(0, 8 * 0.5 * centred.std(), rows)).round(2)
    return frame


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


def write_table(frame: pd.DataFrame, out: str | Path) -> Path:
    """Write ``frame`` as CSV or Parquet, by the extension of ``out`` (``.csv``, ``.parquet``, ``.pq``)."""
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".parquet", ".pq"}:
        raise ValueError(f"{path}: unsupported extension {path.suffix!r}; use .csv or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
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
    args = parser.parse_args(argv)
    if args.images:
        return _write_images(parser, args)
    if args.rows is None or args.rows < 1:
        parser.error("--rows must be at least 1")
    if args.text:
        from pipeline.generate_text import main as text_main

        return text_main(["--rows", str(args.rows), "--out", args.out, "--seed", str(args.seed)])
    try:
        path = write_table(generate_table(args.rows, args.seed, args.task), args.out)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {args.rows:,} rows ({args.task}, label {LABELS[args.task]!r}) to {path}")
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
