"""Keras layers that turn one raw column into numbers, in TensorFlow ops, so the same code runs in the
``tf.data`` input pipeline during training and inside the exported SavedModel at the endpoint.

Each layer takes a rank-1 batch of raw values (float32 for numeric columns, strings otherwise) and returns a
float32 matrix ``(batch, width)``. Their parameters (quantiles, date statistics) are plain numbers fitted on the
training split by :mod:`pipeline.preprocess` and passed in; nothing here looks at data.
"""
from __future__ import annotations

import math

# the vocabulary entry of a lookup that has no term: standardisation lowercases and splits on spaces, so no text
# gives it (Keras refuses an empty vocabulary)
NO_TERM = "NO TERM"

_LAYERS: dict[str, type] | None = None


def layers() -> dict[str, type]:
    """The registered layer classes by name (registered on first use, so importing this module is cheap)."""
    global _LAYERS
    if _LAYERS is None:
        _LAYERS = _define()
    return _LAYERS


def _define() -> dict[str, type]:
    import keras
    import tensorflow as tf

    from pipeline.features import DATE_FORMATS, TRUE_STRINGS, FALSE_STRINGS

    @keras.saving.register_keras_serializable(package="pipeline")
    class QuantileNormal(keras.layers.Layer):
        """A number -> two values: its quantile in the training split (piecewise linear between the stored
        quantiles) mapped to a standard normal value, robust to skew and outliers as trees are (only the rank
        matters); and the number standardized (training mean and std, clipped to +-CLIP), which keeps linear
        relations linear. Missing (NaN) -> the median, plus a 0/1 missing indicator when the training split had
        missing values."""

        CLIP = 5.0

        def __init__(self, values=(0.0,), probabilities=(0.5,), fill=0.0, indicator=False, mean=0.0, std=1.0,
                     **kwargs):
            super().__init__(**kwargs)
            self.values, self.probabilities = [float(v) for v in values], [float(p) for p in probabilities]
            self.fill, self.indicator = float(fill), bool(indicator)
            self.mean, self.std = float(mean), float(std) or 1.0

        def call(self, x):
            x = tf.cast(tf.reshape(x, [-1]), tf.float32)
            missing = tf.math.is_nan(x)
            x = tf.where(missing, self.fill, x)
            v = tf.constant(self.values, tf.float32)
            p = tf.constant(self.probabilities, tf.float32)
            if len(self.values) == 1:
                q = tf.where(x < v[0], 0.0, tf.where(x > v[0], 1.0, p[0]))
            else:
                i = tf.clip_by_value(tf.searchsorted(v, x, side="right"), 1, len(self.values) - 1)
                lo, hi = tf.gather(v, i - 1), tf.gather(v, i)
                plo, phi = tf.gather(p, i - 1), tf.gather(p, i)
                t = tf.clip_by_value(tf.math.divide_no_nan(x - lo, hi - lo), 0.0, 1.0)
                q = plo + t * (phi - plo)
            z = tf.math.ndtri(tf.clip_by_value(q, 1e-3, 1 - 1e-3))
            linear = tf.clip_by_value((x - self.mean) / self.std, -self.CLIP, self.CLIP)
            cols = [z, linear] + ([tf.cast(missing, tf.float32)] if self.indicator else [])
            return tf.stack(cols, axis=1)

        def get_config(self):
            return {**super().get_config(), "values": self.values, "probabilities": self.probabilities,
                    "fill": self.fill, "indicator": self.indicator, "mean": self.mean, "std": self.std}

    @keras.saving.register_keras_serializable(package="pipeline")
    class QuantileNormals(keras.layers.Layer):
        """:class:`QuantileNormal` of several numeric columns at once: a list of rank-1 batches -> one matrix,
        each column's values side by side in the order given (the same numbers: a test holds them equal). One
        set of ops for every column (a batched ``searchsorted`` over the columns' quantiles, padded to the
        longest) instead of some sixty per column: the preprocessor runs once per batch in the input pipeline,
        where a table's dozens of numeric columns made the ops' fixed cost a large part of each batch's.

        ``columns`` holds one dict per column with ``QuantileNormal``'s arguments."""

        def __init__(self, columns=(), **kwargs):
            super().__init__(**kwargs)
            self.columns = [{"values": [float(v) for v in c["values"]],
                             "probabilities": [float(p) for p in c["probabilities"]], "fill": float(c["fill"]),
                             "indicator": bool(c["indicator"]), "mean": float(c["mean"]),
                             "std": float(c["std"]) or 1.0} for c in columns]
            if not self.columns:
                raise ValueError(f"{self.name}: no columns")

        def call(self, inputs):
            cols = self.columns
            longest = max(len(c["values"]) for c in cols)

            def matrix(key, pad):
                return tf.constant([c[key] + [pad] * (longest - len(c[key])) for c in cols], tf.float32)

            def vector(key):
                return tf.constant([[c[key]] for c in cols], tf.float32)  # (columns, 1): broadcasts over rows

            x = tf.stack([tf.cast(tf.reshape(v, [-1]), tf.float32) for v in inputs])  # (columns, rows)
            missing = tf.math.is_nan(x)
            x = tf.where(missing, vector("fill"), x)
            v, p = matrix("values", math.inf), matrix("probabilities", 1.0)
            last = tf.constant([[max(len(c["values"]) - 1, 1)] for c in cols], tf.int32)
            i = tf.clip_by_value(tf.searchsorted(v, x, side="right"), 1, last)
            lo, hi = tf.gather(v, i - 1, batch_dims=1), tf.gather(v, i, batch_dims=1)
            plo, phi = tf.gather(p, i - 1, batch_dims=1), tf.gather(p, i, batch_dims=1)
            t = tf.clip_by_value(tf.math.divide_no_nan(x - lo, hi - lo), 0.0, 1.0)
            q = plo + t * (phi - plo)
            single = tf.constant([[len(c["values"]) == 1] for c in cols])  # one quantile: QuantileNormal's rule
            v0, p0 = v[:, :1], p[:, :1]
            q = tf.where(single, tf.where(x < v0, 0.0, tf.where(x > v0, 1.0, p0)), q)
            z = tf.math.ndtri(tf.clip_by_value(q, 1e-3, 1 - 1e-3))
            linear = tf.clip_by_value((x - vector("mean")) / vector("std"), -QuantileNormal.CLIP, QuantileNormal.CLIP)
            parts = tf.stack([z, linear, tf.cast(missing, tf.float32)], axis=2)  # (columns, rows, 3)
            rows = tf.reshape(tf.transpose(parts, [1, 0, 2]), [-1, 3 * len(cols)])
            keep = [3 * k + j for k, c in enumerate(cols) for j in range(3 if c["indicator"] else 2)]
            return tf.gather(rows, keep, axis=1)

        def compute_output_shape(self, input_shape):
            return (input_shape[0][0], sum(numeric_width(c["indicator"]) for c in self.columns))

        def get_config(self):
            return {**super().get_config(), "columns": self.columns}

    @keras.saving.register_keras_serializable(package="pipeline")
    class ValueIds(keras.layers.Layer):
        """A number -> the integer id of its value among the training split's distinct values (a column of few
        values: codes, counts, levels), to be embedded like a category: the model can then single out each value
        as a tree's splits do, where a normalized number only lets it draw smooth curves. ``boundaries`` are the
        midpoints between consecutive kept values, so a value between two kept ones (rare in training, or
        unseen) takes the id of the nearer; missing (NaN) has an id of its own, the last."""

        def __init__(self, boundaries=(), **kwargs):
            super().__init__(**kwargs)
            self.boundaries = [float(b) for b in boundaries]

        def call(self, x):
            x = tf.cast(tf.reshape(x, [-1]), tf.float32)
            b = tf.constant(self.boundaries, tf.float32)
            ids = tf.searchsorted(b, tf.where(tf.math.is_nan(x), 0.0, x), side="right", out_type=tf.int64)
            return tf.where(tf.math.is_nan(x), tf.constant(len(self.boundaries) + 1, tf.int64), ids)

        def compute_output_shape(self, input_shape):
            return (input_shape[0],)

        def get_config(self):
            return {**super().get_config(), "boundaries": self.boundaries}

    @keras.saving.register_keras_serializable(package="pipeline")
    class BooleanValue(keras.layers.Layer):
        """"true"/"yes"/"1"... -> 1, "false"/"no"/"0"... -> 0, anything else (missing) -> 0.5 and a missing
        indicator when the training split had missing values."""

        def __init__(self, indicator=False, **kwargs):
            super().__init__(**kwargs)
            self.indicator = bool(indicator)

        def call(self, x):
            # each distinct string is read once (a batch holds a handful), then gathered back to its rows
            distinct, where = tf.unique(tf.reshape(x, [-1]))
            return tf.gather(self.encode(distinct), where)

        def encode(self, x):
            s = tf.strings.lower(tf.strings.strip(x))
            is_true = tf.reduce_any(tf.equal(tf.expand_dims(s, 1), tf.constant(sorted(TRUE_STRINGS))), axis=1)
            is_false = tf.reduce_any(tf.equal(tf.expand_dims(s, 1), tf.constant(sorted(FALSE_STRINGS))), axis=1)
            missing = ~(is_true | is_false)
            value = tf.where(is_true, 1.0, tf.where(is_false, 0.0, 0.5))
            cols = [value] + ([tf.cast(missing, tf.float32)] if self.indicator else [])
            return tf.stack(cols, axis=1)

        def get_config(self):
            return {**super().get_config(), "indicator": self.indicator}

    @keras.saving.register_keras_serializable(package="pipeline")
    class DateParts(keras.layers.Layer):
        """A date string -> elapsed time (standardized on the training split), year (standardized), and month,
        day of month, day of week and, with times, hour of day as points on a circle (sin, cos), so December is
        next to January and 23:00 next to 00:00; plus a missing indicator. Unparseable strings count as missing.
        Parsing is a regular expression and Howard Hinnant's days-from-civil arithmetic in TensorFlow ops."""

        def __init__(self, fmt="ymd", has_time=False, elapsed_mean=0.0, elapsed_std=1.0, year_mean=2000.0,
                     year_std=1.0, **kwargs):
            super().__init__(**kwargs)
            self.fmt, self.has_time = str(fmt), bool(has_time)
            self.elapsed_mean, self.elapsed_std = float(elapsed_mean), float(elapsed_std) or 1.0
            self.year_mean, self.year_std = float(year_mean), float(year_std) or 1.0

        def parts(self, x):
            """(year, month, day, hour, minute, second) as float64 and the parsed mask, for a batch of strings."""
            s = tf.strings.strip(tf.reshape(x, [-1]))
            pattern = DATE_FORMATS[self.fmt]
            ok = tf.strings.regex_full_match(s, pattern)
            order = r"\1 \2 \3" if self.fmt == "ymd" else r"\3 \1 \2"
            # "0\4" keeps an absent time group a number ("0") and a present one unchanged ("012" is 12).
            canon = tf.strings.regex_replace(s, pattern, order + r" 0\4 0\5 0\6")
            canon = tf.where(ok, canon, "1970 1 1 0 0 0")
            fields = tf.strings.to_number(tf.strings.split(canon, " ").to_tensor(default_value="0", shape=[None, 6]),
                                          tf.float64)
            return [fields[:, i] for i in range(6)], ok

        def call(self, x):
            # each distinct string is parsed once (dates repeat: a day has many orders), then gathered back
            distinct, where = tf.unique(tf.reshape(x, [-1]))
            return tf.gather(self.encode(distinct), where)

        def encode(self, x):
            (y, m, d, hh, mm, ss), ok = self.parts(x)
            # days since 1970-01-01 (proleptic Gregorian), valid for any year
            y2 = y - tf.cast(m <= 2, tf.float64)
            era = tf.floor(y2 / 400.0)
            yoe = y2 - era * 400.0
            mp = tf.where(m > 2, m - 3.0, m + 9.0)
            doy = tf.floor((153.0 * mp + 2.0) / 5.0) + d - 1.0
            doe = yoe * 365.0 + tf.floor(yoe / 4.0) - tf.floor(yoe / 100.0) + doy
            days = era * 146097.0 + doe - 719468.0
            frac = (hh * 3600.0 + mm * 60.0 + ss) / 86400.0
            elapsed = tf.cast((days + frac - self.elapsed_mean) / self.elapsed_std, tf.float32)
            year = tf.cast((y - self.year_mean) / self.year_std, tf.float32)
            okf = tf.cast(ok, tf.float32)
            tau = 2.0 * math.pi

            def circle(value, period):
                angle = tf.cast(value / period * tau, tf.float32)
                return [tf.sin(angle) * okf, tf.cos(angle) * okf]

            dow = tf.math.floormod(days + 3.0, 7.0)  # 1970-01-01 was a Thursday (3 with Monday = 0)
            cols = [elapsed * okf, year * okf, *circle(m - 1.0, 12.0), *circle(d - 1.0, 31.0), *circle(dow, 7.0)]
            if self.has_time:
                cols += circle(hh + mm / 60.0, 24.0)
            cols.append(1.0 - okf)
            return tf.stack(cols, axis=1)

        def get_config(self):
            return {**super().get_config(), "fmt": self.fmt, "has_time": self.has_time,
                    "elapsed_mean": self.elapsed_mean, "elapsed_std": self.elapsed_std,
                    "year_mean": self.year_mean, "year_std": self.year_std}

    @keras.saving.register_keras_serializable(package="pipeline")
    class PriorCorrection(keras.layers.Layer):
        """Class probabilities of a model fitted with class weights ``w`` -> the probabilities of the data: the
        weighted loss is minimised by q_c ∝ w_c p_c, so p_c ∝ q_c / w_c. Served probabilities stay calibrated
        (and argmax keeps the accuracy) while training gave rare classes more weight."""

        def __init__(self, class_weights=(1.0,), **kwargs):
            super().__init__(**kwargs)
            self.class_weights = [float(w) for w in class_weights]

        def call(self, q):
            p = tf.cast(q, tf.float32) / tf.constant(self.class_weights, tf.float32)
            return p / tf.reduce_sum(p, axis=-1, keepdims=True)

        def get_config(self):
            return {**super().get_config(), "class_weights": self.class_weights}

    @keras.saving.register_keras_serializable(package="pipeline")
    class DecodeImage(keras.layers.Layer):
        """Encoded image files (PNG, JPEG, GIF's first frame, BMP, WebP bytes: a rank-1 string batch) ->
        ``(batch, height, width, channels)`` uint8 pixels: decoded to ``channels`` (grey to RGB and RGBA to RGB
        are converted), resized bilinearly (with antialiasing when shrinking) to ``height`` x ``width`` as they
        are, without keeping the aspect ratio, and rounded back to 8 bits, so training and the endpoint see the
        same pixels. 8 bits rather than floats: decoded training images take a quarter of the memory, so four
        times as many fit in the in-memory cache (``training.in_memory_mb``) and are decoded once instead of
        every epoch; the builders rescale them. Bytes that are not an image fail the request (TensorFlow's
        InvalidArgument, naming the problem)."""

        def __init__(self, height=32, width=32, channels=3, **kwargs):
            super().__init__(**kwargs)
            self.height, self.width, self.channels = int(height), int(width), int(channels)

        def decode(self, data):
            image = tf.io.decode_image(data, channels=self.channels, expand_animations=False, dtype=tf.float32)
            image = tf.image.resize(image, [self.height, self.width], antialias=True)
            image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)
            return tf.ensure_shape(image, [self.height, self.width, self.channels])

        def call(self, x):
            x = tf.reshape(x, [-1])
            return tf.map_fn(self.decode, x, fn_output_signature=tf.TensorSpec(
                [self.height, self.width, self.channels], tf.uint8))

        def compute_output_shape(self, input_shape):
            return (input_shape[0], self.height, self.width, self.channels)

        def get_config(self):
            return {**super().get_config(), "height": self.height, "width": self.width, "channels": self.channels}

    @keras.saving.register_keras_serializable(package="pipeline")
    class TfIdf(keras.layers.Layer):
        """Text -> ``(batch, len(vocabulary))`` float32: the L2-normalised TF-IDF of its words and word n-grams,
        what ``TextVectorization(output_mode="tf_idf")`` followed by ``UnitNormalization`` gives (the same
        standardisation, splitting, n-grams and vocabulary, column 0 the out-of-vocabulary terms; a test holds
        them equal), at about a third of the cost. Keras builds the dense counts, multiplies them by the IDF and
        divides by the norm in three passes over the ``batch x vocabulary`` matrix, which dominate the input
        pipeline's time for a vocabulary of thousands; here each row's distinct terms are counted and weighted
        on the tokens themselves and the matrix is written once. An empty text gives a row of zeros.

        ``vocabulary`` starts with ``[UNK]`` (as ``TextVectorization.get_vocabulary()`` lists it) and ``idf``
        has one weight per entry."""

        def __init__(self, vocabulary=("[UNK]",), idf=(1.0,), ngrams=None, **kwargs):
            super().__init__(**kwargs)
            self.vocabulary = [str(v) for v in vocabulary]
            self.idf = [float(w) for w in idf]
            self.ngrams = ngrams
            if not self.vocabulary or self.vocabulary[0] != "[UNK]" or len(self.idf) != len(self.vocabulary):
                raise ValueError(f"{self.name}: the vocabulary must start with [UNK] and have one idf weight per "
                                 f"entry (got {len(self.vocabulary)} entries and {len(self.idf)} weights)")
            # int ids, ragged: 0 is the (unused) padding id, 1 out of vocabulary, 2.. the vocabulary's terms
            self.ids = keras.layers.TextVectorization(vocabulary=self.vocabulary[1:] or [NO_TERM], ngrams=ngrams,
                                                      output_mode="int", ragged=True, name=f"{self.name}_ids")

        def call(self, x):
            width = len(self.vocabulary)
            x = tf.reshape(x, [-1])
            n = tf.shape(x, out_type=tf.int64)[0]
            terms = self.ids(x) - 1  # the column: 0 out of vocabulary, as in tf_idf mode
            col, row = tf.cast(terms.flat_values, tf.int64), terms.value_rowids()
            # distinct (row, column) pairs, in row order (tf.unique keeps first occurrences' order)
            pair, where = tf.unique(row * width + col)
            count = tf.math.unsorted_segment_sum(tf.ones_like(where, tf.float32), where, tf.shape(pair)[0])
            pair_row, pair_col = pair // width, pair % width
            value = count * tf.gather(tf.constant(self.idf, tf.float32), pair_col)
            norm2 = tf.math.unsorted_segment_sum(value * value, pair_row, n)
            value = value * tf.gather(tf.math.rsqrt(tf.maximum(norm2, 1e-12)), pair_row)
            cols = tf.RaggedTensor.from_value_rowids(tf.cast(pair_col, tf.int32), pair_row, nrows=n, validate=False)
            weights = tf.RaggedTensor.from_value_rowids(value, pair_row, nrows=n, validate=False)
            dense = tf.math.bincount(cols, weights=weights, minlength=width, maxlength=width, axis=-1)
            return tf.reshape(dense, [-1, width])  # bincount's static shape is unknown

        def build(self, input_shape):
            self.ids.build(input_shape)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], len(self.vocabulary))

        def get_config(self):
            return {**super().get_config(), "vocabulary": self.vocabulary, "idf": self.idf, "ngrams": self.ngrams}

    return {"QuantileNormal": QuantileNormal, "ValueIds": ValueIds, "BooleanValue": BooleanValue,
            "DateParts": DateParts, "PriorCorrection": PriorCorrection, "DecodeImage": DecodeImage, "TfIdf": TfIdf,
            "QuantileNormals": QuantileNormals}


def numeric_width(indicator: bool) -> int:
    """Columns :class:`QuantileNormal` outputs: quantile-normal, standardized, (missing)."""
    return 3 if indicator else 2


def date_width(has_time: bool) -> int:
    """Columns :class:`DateParts` outputs: elapsed, year, 3 circles, (hour circle), missing."""
    return 2 + 6 + (2 if has_time else 0) + 1
