"""TFRA's own Keras demos, run with the import changed to tfra_redis and a Redis creator added,
on synthetic data, against a real redis-server.

* ``demo/dynamic_embedding/movielens-1m-keras``: a ``tf.keras.Model`` subclass with a
  ``@tf.function`` ``call``, two ``SquashedEmbedding`` layers, ``DynamicEmbeddingOptimizer(Adam)``,
  ``compile`` + ``fit``, ``save_weights`` then ``load_weights`` into a fresh model.
* ``demo/dynamic_embedding/amazon-video-games-keras-eager``: one ``fit`` call per step on
  batches taken from an iterator, ``model.embedding_store.size()`` between steps, and the same
  model trained by a custom loop over ``model.trainable_variables``.

Differences from the TFRA scripts, each forced by Keras 3 and marked ``# Keras 3:`` below:
``save_weights`` paths end in ``.weights.h5``; a model whose ``call`` is a ``tf.function`` is
called once before ``fit`` (without it Keras 3 bakes the dense layers' first values into the
traced ``call`` and never trains them, with or without dynamic embeddings).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfra_redis import dynamic_embedding as de  # noqa: E402 - the changed import

Adam = tf.keras.optimizers.Adam

pytestmark = pytest.mark.usefixtures("collect_tables_at_module_end")

USERS, MOVIES = 300, 200


@pytest.fixture
def creator(tmp_path, standalone_server, make_config):
    path = make_config(tmp_path, standalone_server, table_store_mode=0)
    return de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(path)))


# -- movielens-1m-keras ---------------------------------------------------------------------------


class DualChannelsDeepModel(tf.keras.Model):
    """The demo's model, as written there (plus kv_creator and a name prefix)."""

    def __init__(
        self,
        user_embedding_size=1,
        movie_embedding_size=1,
        embedding_initializer=None,
        is_training=True,
        kv_creator=None,
        prefix="",
    ):
        if not is_training:
            de.enable_inference_mode()

        super().__init__()
        self.user_embedding_size = user_embedding_size
        self.movie_embedding_size = movie_embedding_size

        if embedding_initializer is None:
            embedding_initializer = tf.keras.initializers.Zeros()

        self.user_embedding = de.keras.layers.SquashedEmbedding(
            user_embedding_size,
            initializer=embedding_initializer,
            name=f"{prefix}user_embedding",
            kv_creator=kv_creator,
        )
        self.movie_embedding = de.keras.layers.SquashedEmbedding(
            movie_embedding_size,
            initializer=embedding_initializer,
            name=f"{prefix}movie_embedding",
            kv_creator=kv_creator,
        )

        self.dnn1 = tf.keras.layers.Dense(
            64,
            activation="relu",
            kernel_initializer=tf.keras.initializers.RandomNormal(0.0, 0.1),
            bias_initializer=tf.keras.initializers.RandomNormal(0.0, 0.1),
        )
        self.dnn2 = tf.keras.layers.Dense(
            16,
            activation="relu",
            kernel_initializer=tf.keras.initializers.RandomNormal(0.0, 0.1),
            bias_initializer=tf.keras.initializers.RandomNormal(0.0, 0.1),
        )
        self.dnn3 = tf.keras.layers.Dense(
            5,
            activation="softmax",
            kernel_initializer=tf.keras.initializers.RandomNormal(0.0, 0.1),
            bias_initializer=tf.keras.initializers.RandomNormal(0.0, 0.1),
        )
        self.bias_net = tf.keras.layers.Dense(
            5,
            activation="softmax",
            kernel_initializer=tf.keras.initializers.RandomNormal(0.0, 0.1),
            bias_initializer=tf.keras.initializers.RandomNormal(0.0, 0.1),
        )

    @tf.function
    def call(self, features):
        user_id = tf.reshape(features["user_id"], (-1, 1))
        movie_id = tf.reshape(features["movie_id"], (-1, 1))
        user_latent = self.user_embedding(user_id)
        movie_latent = self.movie_embedding(movie_id)
        latent = tf.concat([user_latent, movie_latent], axis=1)

        x = self.dnn1(latent)
        x = self.dnn2(x)
        x = self.dnn3(x)

        bias = self.bias_net(latent)
        x = 0.2 * x + 0.8 * bias
        return x


def _ratings(n: int, seed: int = 0):
    """Synthetic ratings: a user taste and a movie quality decide the 1-5 star rating."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, USERS, size=n)
    movies = rng.integers(1, MOVIES, size=n)
    taste = rng.normal(size=USERS)
    quality = rng.normal(size=MOVIES)
    stars = np.clip(np.round(3 + taste[users] + quality[movies]), 1, 5).astype(np.int64)
    features = {"user_id": users.astype(np.int64), "movie_id": movies.astype(np.int64)}
    return features, tf.one_hot(stars - 1, 5).numpy()


# Keras 3 warns that fit's default shuffle=True does not apply to a tf.data.Dataset.
@pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning")
def test_movielens_1m_keras(creator, unique_name, standalone_server, tmp_path):
    features, ratings = _ratings(4096)
    dataset = tf.data.Dataset.from_tensor_slices((features, ratings)).batch(32)
    model = DualChannelsDeepModel(
        8, 8, tf.keras.initializers.RandomNormal(0.0, 0.5), kv_creator=creator, prefix=unique_name
    )
    optimizer = Adam(1e-2)  # the demo's 1e-3 is for 20,000 steps of the real data set
    optimizer = de.DynamicEmbeddingOptimizer(optimizer)

    auc = tf.keras.metrics.AUC(num_thresholds=1000)
    model.compile(optimizer=optimizer, loss=tf.keras.losses.MeanSquaredError(), metrics=[auc])
    model({k: v[:2] for k, v in features.items()})  # Keras 3: build a tf.function call first

    history = model.fit(dataset, epochs=3, verbose=0).history
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    assert history["auc"][-1] > history["auc"][0]

    # Rows and Adam's slots under TFRA's names.
    user = f"{unique_name}user_embedding"
    expected = [f"test:{user}-parameter{{3560}}"] + [
        f"test:{user}-parameter_DynamicEmbedding_{user}-shadow_{slot}{{3560}}"
        for slot in ("m", "v")
    ]
    keys = sorted(standalone_server.execute("KEYS", f"test:{user}*"))
    assert keys == sorted(expected)
    assert standalone_server.execute("HLEN", expected[0]) == len(np.unique(features["user_id"]))

    # save_weights, then load_weights into a fresh model: the same predictions.
    path = str(tmp_path / "variables.weights.h5")  # Keras 3: the suffix is required
    model.save_weights(path)
    sample = {k: v[:64] for k, v in features.items()}
    before = model.predict(sample, verbose=0)
    model.user_embedding.params.clear()  # the rows must come back from the file
    model.movie_embedding.params.clear()

    fresh = DualChannelsDeepModel(
        8, 8, tf.keras.initializers.Zeros(), False, kv_creator=creator, prefix=unique_name
    )
    try:
        fresh(sample)  # builds it (TFRA's export() does the same with dummy data)
        fresh.load_weights(path)
        np.testing.assert_allclose(fresh.predict(sample, verbose=0), before, rtol=1e-5)
    finally:
        de.enable_train_mode()


# -- amazon-video-games-keras-eager ---------------------------------------------------------------


class VideoGameDnn(tf.keras.Model):
    """The demo's model, with ``Embedding`` for its ``FieldWiseEmbedding`` (see the closing
    note: field-wise pooling and restrict policies are not built yet)."""

    def __init__(self, batch_size=1, embedding_size=1, kv_creator=None, name_prefix=""):
        super().__init__()
        self.batch_size = batch_size
        self.embedding_size = embedding_size
        self.embedding_layer = de.keras.layers.Embedding(
            self.embedding_size,
            initializer=tf.keras.initializers.RandomNormal(0.0, 0.05),
            bp_v2=False,
            combiner="mean",
            name=f"{name_prefix}video_embedding",
            kv_creator=kv_creator,
        )
        self.embedding_store = self.embedding_layer.params
        self.flat = tf.keras.layers.Flatten()
        self.dnn0 = tf.keras.layers.Dense(64, activation="relu", use_bias=True)
        self.dnn1 = tf.keras.layers.Dense(16, activation="relu", use_bias=True)
        self.dnn2 = tf.keras.layers.Dense(1, activation="sigmoid", use_bias=False)

    def call(self, x):
        x = self.embedding_layer(x)
        x = self.flat(x)
        x = self.dnn0(x)
        x = self.dnn1(x)
        return self.dnn2(x)


def _clicks(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 500, size=(n, 4)).astype(np.int64)
    weight = rng.normal(size=500)
    labels = (weight[ids].sum(axis=1) > 0).astype(np.float32)
    return ids, labels


def test_amazon_video_games_keras_eager(creator, unique_name):
    ids, labels = _clicks(64 * 60)
    iterator = iter(tf.data.Dataset.from_tensor_slices((ids, labels)).batch(64))
    model = VideoGameDnn(
        batch_size=64, embedding_size=4, kv_creator=creator, name_prefix=unique_name
    )
    optimizer = Adam(1e-2, clipnorm=None)
    optimizer = de.DynamicEmbeddingOptimizer(optimizer)
    auc = tf.keras.metrics.AUC(num_thresholds=1000)
    accuracy = tf.keras.metrics.BinaryAccuracy(dtype=tf.float32)
    model.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=[accuracy, auc])

    losses, sizes = [], []
    for _step in range(60):
        features, step_labels = next(iterator)
        history = model.fit(features, step_labels, steps_per_epoch=1, epochs=1, verbose=0)
        losses.append(history.history["loss"][0])
        sizes.append(int(model.embedding_store.size()))
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    assert sizes == sorted(sizes) and sizes[-1] == len(np.unique(ids))
    assert int(optimizer.iterations.numpy()) == 60


def test_amazon_model_custom_loop(creator, unique_name):
    """The same model trained by a custom eager loop: gradients of model.trainable_variables."""
    ids, labels = _clicks(64 * 40, seed=2)
    model = VideoGameDnn(
        batch_size=64, embedding_size=4, kv_creator=creator, name_prefix=unique_name
    )
    optimizer = de.DynamicEmbeddingOptimizer(Adam(1e-2))
    loss_fn = tf.keras.losses.BinaryCrossentropy()
    losses = []
    for start in list(range(0, len(ids), 64)) * 2:
        x, y = ids[start : start + 64], labels[start : start + 64, None]
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        losses.append(float(loss))
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    assert int(model.embedding_store.size()) == len(np.unique(ids))
