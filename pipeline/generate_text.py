"""A synthetic text-classification table: customer-support messages and the team each one belongs to.

    python -m pipeline.generate_text --rows 20000 --out tickets.csv [--seed 0]

No text-classification data set ships inside the installed packages (scikit-learn's and statsmodels' bundled
data are numeric tables; 20 Newsgroups, IMDB and the nltk corpora are downloads, and nothing here downloads), so
the project owns this generator, in the style of :mod:`pipeline.generate`. Each row is one message:

    message   str   10 to 40 words. Most words are filler every team's messages share (``i``, ``order``,
                    ``please``, ``still``...), drawn with Zipf-like frequencies, as most words of a real message
                    say nothing about its topic; about one word in five is a topic word of the message's team
                    (Zipf-like within the team's list), one in twenty a topic word of another team (people
                    mention other things); some topic words belong to two teams (``settings``: technical and
                    account; ``code``: account and billing; ``late``: delivery and billing), so a word alone
                    can mislead. A third of the messages say what they are *not* about: ``not``, ``no`` or
                    ``never`` right before another team's topic word (``... no refund ...`` in a delivery message),
                    which a bag of single words reads the wrong way; a bigram or a sequence model can read it.
                    One message in six is vague (few topic words): those are hard for any model. 2% are empty.
    channel   str   email / chat / phone / app; weakly tied to the team (technical messages come from the
                    app more often), so a model that combines it with the text gains a little.
    team      str   (the label) billing (~30%), technical (~30%), delivery (~22%), account (~18%); 6% of
                    the labels are replaced by a random team (mislabelled tickets), so no model reaches 100%.

A TF-IDF + logistic regression baseline reaches about 0.80 accuracy (``benchmarks/text.py``).
The table is a pure function of ``rows`` and ``seed``; numpy draws every choice, a Python join makes the strings
(20,000 rows in a few seconds).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

LABEL = "team"
TEXT = "message"
TEAMS = ("billing", "technical", "delivery", "account")
TEAM_SHARE = (0.30, 0.30, 0.22, 0.18)

TOPIC_WORDS = {
    "billing": ("invoice", "charged", "refund", "payment", "card", "bill", "fee", "price", "overcharged",
                "receipt", "subscription", "discount", "credit", "debit", "paid", "vat", "amount", "cost",
                "transaction", "statement", "renewal", "coupon", "code", "late", "money"),
    "technical": ("error", "crash", "crashes", "bug", "freezes", "screen", "install", "slow", "loading", "button",
                  "page", "browser", "android", "iphone", "version", "sync", "bluetooth", "battery", "reboot",
                  "firmware", "wifi", "connection", "settings", "glitch", "notification"),
    "delivery": ("package", "parcel", "courier", "tracking", "shipped", "arrived", "late", "address", "delivered",
                 "driver", "damaged", "warehouse", "dispatch", "shipping", "postcode", "doorstep", "lost",
                 "collection", "signature", "carrier", "days", "route", "neighbour", "pickup", "box"),
    "account": ("password", "login", "username", "email", "account", "profile", "locked", "reset",
                "verification", "code", "security", "hacked", "delete", "signup", "twofactor", "details", "name",
                "phone", "privacy", "settings", "access", "verify", "sign", "deactivate", "linked"),
}
FILLER = np.array(
    "i the my a to and is it was please help hi hello thanks today yesterday again still can you this that have "
    "has been with for on of in since week order service customer problem issue need want know just when why how "
    "what there some any about your me we our time last after before now already question".split())
NEGATIONS = np.array(["not", "no", "never"])
CHANNELS = np.array(["email", "chat", "phone", "app"])
# P(channel | team): technical messages come from the app more often, billing by email, delivery by phone.
CHANNEL_GIVEN_TEAM = np.array([[0.40, 0.30, 0.20, 0.10],
                               [0.20, 0.30, 0.15, 0.35],
                               [0.25, 0.30, 0.30, 0.15],
                               [0.30, 0.35, 0.20, 0.15]])
MIN_WORDS, MAX_WORDS = 10, 40
P_TOPIC, P_TOPIC_VAGUE, P_OTHER = 0.2, 0.05, 0.05
P_VAGUE, P_NEGATION, P_EMPTY, LABEL_NOISE = 1 / 6, 1 / 3, 0.02, 0.06


def _zipf(n: int, s: float = 1.0) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def generate_text_table(rows: int, seed: int = 0) -> pd.DataFrame:
    """A synthetic support-ticket table of ``rows`` rows: ``message`` (text), ``channel`` and the label ``team``.

    Args:
        rows: number of messages; at least 1.
        seed: seed of the random generator; the same ``(rows, seed)`` always gives the same table.
    """
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    rng = np.random.default_rng(seed)
    n_teams = len(TEAMS)
    topics = [np.array(TOPIC_WORDS[t]) for t in TEAMS]
    team = rng.choice(n_teams, rows, p=TEAM_SHARE)
    n_words = rng.integers(MIN_WORDS, MAX_WORDS + 1, rows)
    vague = rng.random(rows) < P_VAGUE
    p_topic = np.where(vague, P_TOPIC_VAGUE, P_TOPIC)[:, None]

    u = rng.random((rows, MAX_WORDS))
    filler = FILLER[rng.choice(len(FILLER), (rows, MAX_WORDS), p=_zipf(len(FILLER), 0.8))]
    topic_rank = rng.choice(25, (rows, MAX_WORDS), p=_zipf(25, 0.7))
    # another team than the message's own: 1..n_teams-1 added to it, modulo
    other = (team[:, None] + rng.integers(1, n_teams, (rows, MAX_WORDS))) % n_teams
    own_words = np.stack([t[topic_rank] for t in topics])          # (teams, rows, MAX_WORDS)
    own = np.take_along_axis(own_words, team[None, :, None].repeat(MAX_WORDS, axis=2), axis=0)[0]
    others = np.take_along_axis(own_words, other[None], axis=0)[0]
    words = np.where(u < p_topic, own, np.where(u < p_topic + P_OTHER, others, filler))

    negated = rng.random(rows) < P_NEGATION
    neg_at = rng.integers(0, MIN_WORDS - 1, rows)         # where "not <other team's word>" goes
    neg_word = NEGATIONS[rng.integers(0, len(NEGATIONS), rows)]
    neg_team = (team + rng.integers(1, n_teams, rows)) % n_teams
    neg_rank = rng.choice(25, rows, p=_zipf(25, 0.7))
    empty = rng.random(rows) < P_EMPTY

    messages = []
    for i, (w, n) in enumerate(zip(words.tolist(), n_words.tolist(), strict=True)):
        if empty[i]:
            messages.append("")
            continue
        w = w[:n]
        if negated[i]:
            at = int(neg_at[i])
            w[at:at + 2] = [str(neg_word[i]), str(topics[neg_team[i]][neg_rank[i]])]
        messages.append(" ".join(w))

    channel = np.empty(rows, dtype=int)
    for t in range(n_teams):
        at = team == t
        channel[at] = rng.choice(len(CHANNELS), int(at.sum()), p=CHANNEL_GIVEN_TEAM[t])
    label = team.copy()
    noisy = rng.random(rows) < LABEL_NOISE
    label[noisy] = rng.integers(0, n_teams, int(noisy.sum()))
    return pd.DataFrame({TEXT: np.array(messages, dtype=object), "channel": CHANNELS[channel],
                         LABEL: np.array(TEAMS)[label]})


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.generate_text --rows N --out PATH [--seed S]``: write one table (CSV or Parquet)."""
    from pipeline.generate import write_table

    parser = argparse.ArgumentParser(prog="python -m pipeline.generate_text", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True, help="number of rows")
    parser.add_argument("--out", required=True, help="output file: .csv or .parquet")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    try:
        path = write_table(generate_text_table(args.rows, args.seed), args.out)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {args.rows:,} rows (label {LABEL!r}, text column {TEXT!r}) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
