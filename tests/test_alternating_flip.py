"""Alternating flips (airbench): each image mirrored in every other epoch, the same on the host
and the device data paths."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_data import random_dataset, tiny_cnn3

from jaxcnn.data import alternating_flip_mask, epoch_batches, flip_rows
from jaxcnn.data.batching import epoch_indices
from jaxcnn.train import (
    FitConfig,
    HostFeed,
    Preprocess,
    build,
    fit,
    make_feed,
    make_indexed_train_step,
    make_mesh,
)

TRAIN, EVAL = random_dataset(48, 0), random_dataset(10, 1)
MODEL = tiny_cnn3()
CFG = FitConfig(epochs=2, batch_size=16, lr=0.05, log_every=2, data_on_device=False,
                flip="alternate")


def expected(images, rows, epoch, seed):
    """The batch ``rows`` of ``epoch`` as alternating flips show it, row by row in numpy."""
    mask = alternating_flip_mask(rows, epoch, len(images), seed)
    return np.stack([images[r][:, ::-1] if m else images[r] for r, m in zip(rows, mask,
                                                                             strict=True)])


def test_mask_alternates_per_epoch_and_flips_about_half():
    rows = np.arange(10_000)
    m0, m1, m2, m3 = (alternating_flip_mask(rows, e, 10_000, seed=7) for e in range(4))
    assert m0.dtype == bool and m0.shape == rows.shape
    np.testing.assert_array_equal(m1, ~m0)  # each image: mirrored in one epoch, not the next
    np.testing.assert_array_equal(m2, m0)
    np.testing.assert_array_equal(m3, m1)
    assert abs(m0.mean() - 0.5) < 0.02
    np.testing.assert_array_equal(m0, alternating_flip_mask(rows, 0, 10_000, seed=7))  # pure
    assert (m0 != alternating_flip_mask(rows, 0, 10_000, seed=8)).mean() > 0.4
    want = np.random.default_rng([7, 0xF11F]).random(10_000) < 0.5
    np.testing.assert_array_equal(m0, want)
    idx = np.array([[5, 3], [9999, 0]])  # any shape of rows: a (K, B) block of an epoch
    np.testing.assert_array_equal(alternating_flip_mask(idx, 3, 10_000, 7), ~want[idx])
    with pytest.raises(ValueError, match=r"rows must be in \[0, 4\)"):
        alternating_flip_mask([4], 0, 4, 0)


def test_flip_rows_numpy_and_jax_agree():
    x = TRAIN.images[:6]
    f = np.array([True, False, True, True, False, False])
    want = np.stack([im[:, ::-1] if m else im for im, m in zip(x, f, strict=True)])
    np.testing.assert_array_equal(flip_rows(x, f), want)
    np.testing.assert_array_equal(np.asarray(flip_rows(jnp.asarray(x), jnp.asarray(f))), want)


def test_host_batches_and_indexed_step_see_exactly_the_mirrored_rows():
    seed, bs = 3, 16
    for epoch in (0, 1):
        idx = epoch_indices(len(TRAIN), bs, seed=seed, epoch=epoch)
        host = list(epoch_batches(TRAIN, bs, seed=seed, epoch=epoch, alternate_flip=True,
                                  process_index=0, process_count=1))
        for rows, (images, labels) in zip(idx, host, strict=True):
            np.testing.assert_array_equal(images, expected(TRAIN.images, rows, epoch, seed))
            np.testing.assert_array_equal(labels, TRAIN.labels[rows])
        # The device path: a stub step that returns the images it is given.
        seen = make_indexed_train_step(lambda s, x, y: (s + 1, {"x": x, "y": y}))
        flips = alternating_flip_mask(idx, epoch, len(TRAIN), seed)
        for k in (1, len(idx)):  # one step, and a scan over the epoch
            steps, m = seen(jnp.int32(0), jnp.asarray(TRAIN.images), jnp.asarray(TRAIN.labels),
                            jnp.asarray(idx[:k]), jnp.asarray(flips[:k]))
            assert int(steps) == k
            np.testing.assert_array_equal(np.asarray(m["x"]), np.stack([b[0] for b in host[:k]]))
            np.testing.assert_array_equal(np.asarray(m["y"]), np.stack([b[1] for b in host[:k]]))
    with pytest.raises(ValueError, match="flips must be"):
        seen(0, TRAIN.images, TRAIN.labels, idx, flips[:, :3])


def test_host_feed_hands_the_step_the_mirrored_rows():
    inputs = []

    def record(state, images, labels):
        inputs.append(np.asarray(images))
        return state, {}

    feed = HostFeed(record, TRAIN, 16, make_mesh(), seed=5, alternate_flip=True)
    for epoch in (0, 1):
        inputs.clear()
        list(feed.epoch(None, epoch))
        idx = epoch_indices(len(TRAIN), 16, seed=5, epoch=epoch)
        for rows, x in zip(idx, inputs, strict=True):
            np.testing.assert_array_equal(x, expected(TRAIN.images, rows, epoch, 5))


def test_preprocess_alternate_keeps_the_crop_but_no_random_flip():
    x = jnp.asarray(TRAIN.images)
    key = jax.random.key(0)
    alt = Preprocess(mean=(0.5,) * 3, std=(0.25,) * 3, augment=True, crop_pad=0,
                     flip="alternate")
    assert alt.alternating_flips and json.loads(json.dumps(alt.to_dict()))["flip"] == "alternate"
    np.testing.assert_array_equal(alt.train(key, x), alt.eval(x))  # nothing random left
    rand = dataclasses.replace(alt, flip=True)
    assert not np.array_equal(rand.train(key, x), rand.eval(x))
    cropped = dataclasses.replace(alt, crop_pad=2)
    plain = dataclasses.replace(cropped, flip=False)
    np.testing.assert_array_equal(cropped.train(key, x), plain.train(key, x))  # the same crop
    assert not dataclasses.replace(alt, augment=False).alternating_flips
    with pytest.raises(ValueError, match="flip must be True, False or 'alternate'"):
        Preprocess(mean=(0.5,), std=(0.5,), flip="sometimes")
    with pytest.raises(ValueError, match="FitConfig.flip must be True, False or 'alternate'"):
        FitConfig(flip="yes")
    assert CFG.alternating_flips and not dataclasses.replace(CFG, augment=False).alternating_flips


def test_host_and_device_paths_give_the_same_run(tmp_path):
    """Two epochs (both parities), the device path 2 steps per call: bitwise the same run."""
    host = fit(MODEL, TRAIN, None, config=CFG, workdir=tmp_path / "host", verbose=False)
    dev_cfg = dataclasses.replace(CFG, data_on_device=True, steps_per_dispatch=2)
    dev = fit(MODEL, TRAIN, None, config=dev_cfg, workdir=tmp_path / "dev", verbose=False)
    assert dev.data_on_device and not host.data_on_device
    for a, b in zip(jax.tree.leaves(dev.state.params), jax.tree.leaves(host.state.params),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert [r["train_loss"] for r in dev.history] == [r["train_loss"] for r in host.history]


def test_engine_feeds_pass_the_mask_only_with_alternate_flips():
    engine = build(MODEL, dataclasses.replace(CFG, data_on_device=True), TRAIN)
    assert make_feed(engine, TRAIN, on_device=True).alternate_flip
    assert make_feed(engine, TRAIN).alternate_flip
    plain = build(MODEL, dataclasses.replace(CFG, flip=True), TRAIN)
    assert not make_feed(plain, TRAIN, on_device=True).alternate_flip
    assert not make_feed(plain, TRAIN).alternate_flip
