"""An example of a user's own model: wide & deep (Cheng et al., 2016, "Wide & Deep Learning for Recommender
Systems") for a table, written as any user module would be.

A config names it with ``model.module: my_model.py`` (found beside the config first, then in the working
directory) and sets its keyword parameters under ``model.params``, as ``conf/examples/custom_model.yaml``
does. The pipeline calls :func:`build` with the *processed* features (the preprocessing is the pipeline's
and ships inside the exported model, so nothing here sees raw values):

- ``inputs["numeric"]``: a float matrix (``spec.numeric_width`` columns) of the numbers, booleans and date
  parts, already normalised; absent when the table has none;
- ``inputs["cat__<column>"]``: the integer id of each categorical value, in ``[0, spec.categorical[name])``
  (also the id of the value of a numeric column with few distinct values, which is in ``numeric`` as well);
- ``inputs["text__<column>"]``: an L2-normalised TF-IDF vector, ``spec.text[name]`` wide.

The model has two parts whose logits are added:

- the *wide* part, a linear model on the numeric matrix, every categorical id one-hot and the TF-IDF vectors:
  it memorises what single values say about the label;
- the *deep* part, an Embedding per categorical column (the model's own layers, ``embedding_dim`` wide), a
  Dense projection of each text vector, concatenated with the numeric matrix and fed through a tower of Dense
  layers (``deep_units``) with dropout: it generalises across combinations of values.

It returns what every builder returns: class probabilities (softmax, ``spec.n_outputs`` wide) for a
classification, one value in standard units for a regression (the exported model rescales it to the label's).
The last layers are float32 so that the output stays accurate under ``training.mixed_precision``.

Only standard Keras layers are used, so the saved model loads without registering anything. Keras is imported
inside :func:`build`: the pipeline imports this file when it loads the config (to check ``model.params``
against the signature of :func:`build`), and that check should not pay for TensorFlow.
"""
from __future__ import annotations

from typing import Sequence


def build(inputs, spec, *, deep_units: Sequence[int] = (64, 32), dropout: float = 0.1, embedding_dim: int = 8,
          text_units: int = 32, wide_l2: float = 1e-4):
    """The wide & deep model on the processed inputs.

    Args:
        inputs: the processed feature tensors by name (``numeric``, ``cat__<column>``, ``text__<column>``).
        spec: the :class:`pipeline.preprocess.ModelSpec`: the task, the output width, and each input's size.
        deep_units: the widths of the deep tower's Dense layers, first to last.
        dropout: the dropout rate after each layer of the deep tower.
        embedding_dim: the width of each categorical column's embedding in the deep part.
        text_units: the width each TF-IDF vector is projected to in the deep part.
        wide_l2: the L2 penalty on the wide part's weights (it sees every one-hot id and TF-IDF term).

    Returns:
        Class probabilities ``(batch, spec.n_outputs)`` for classification, ``(batch, 1)`` for regression.
    """
    import keras

    def concat(parts, name):
        return parts[0] if len(parts) == 1 else keras.layers.Concatenate(name=name)(parts)

    wide, deep = [], []
    if "numeric" in inputs:
        wide.append(inputs["numeric"])
        deep.append(inputs["numeric"])
    for name, n_ids in spec.categorical.items():
        ids = inputs[name]
        one_hot = keras.layers.CategoryEncoding(n_ids, output_mode="one_hot", name=f"wide_{name}_onehot")
        wide.append(one_hot(ids))
        deep.append(keras.layers.Embedding(n_ids, int(embedding_dim), name=f"deep_{name}_embedding")(ids))
    for name in spec.text:
        wide.append(inputs[name])
        project = keras.layers.Dense(int(text_units), activation="relu", name=f"deep_{name}_projection")
        deep.append(project(inputs[name]))

    x = concat(deep, "deep_inputs")
    for i, units in enumerate(deep_units):
        x = keras.layers.Dense(int(units), activation="relu", name=f"deep_dense_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(float(dropout), name=f"deep_dropout_{i}")(x)
    deep_logits = keras.layers.Dense(spec.n_outputs, dtype="float32", name="deep_logits")(x)
    wide_logits = keras.layers.Dense(spec.n_outputs, dtype="float32", name="wide_logits",
                                     kernel_regularizer=keras.regularizers.L2(wide_l2) if wide_l2 else None)(
        concat(wide, "wide_inputs"))
    logits = keras.layers.Add(dtype="float32", name="wide_and_deep")([wide_logits, deep_logits])
    if spec.task == "classification":
        return keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return logits
