"""Regularised gradient ascent in the model's input space, shared by filter and class visualization.

``ascend`` maximises one objective per image of a batch (a channel's mean
activation, or a class logit minus an L2 penalty), all images at once: one
forward and one backward pass per step for the whole batch.

Each step (Mordvintsev et al. 2015, Olah et al. 2017 "Feature Visualization"):

* jitter: the images are rolled by a random offset of up to ``jitter`` pixels
  before the forward pass and the gradient is rolled back, so no pattern can
  rely on exact pixel positions;
* the gradient of each image is divided by its own mean absolute value (one
  step size suits every objective, and channels of very different scale can
  share a batch); the step is ``learning_rate`` times the input range;
* blur: every ``blur_every`` steps the images are smoothed with a Gaussian of
  ``blur_sigma`` pixels (a penalty on high frequencies);
* the images are clipped to the model's valid input range;
* ReLUs are redirected during the first quarter of the regularised steps
  (Lucid's ``redirected_relu``): in an image where no unit of a ReLU layer passes
  any gradient, the off units let through the gradient that would turn them on,
  so a channel that is silent on the starting noise, or sits behind silent units
  (a BatchNormalization after a ReLU), still gets a direction to climb. A model
  without such ReLUs (swish, ReLU6) has nothing to redirect.

Filter and class visualization share one traced step per layer (``unit_objective``:
a class logit or a channel mean, by target index; the blur kernel is an argument),
so the internals trace the model's backward pass to the input once (twice with
ReLUs to redirect): on EfficientNetB0 each trace and first call costs about 4 s,
as much as 40 ascent steps of two images.

Multiscale: the images are parameterised at a lower resolution first and
resized (bilinear) to the model's input size inside the forward pass; after
each of the ``octaves`` the parameterisation is upsampled by ``octave_scale``,
ending at the input size. The regularised steps are shared equally among the octaves.

Polish: the last ``polish`` share of the steps runs at the input size without
jitter; the step starts at ``POLISH_STEP`` of the regularised one and, with the
blur's strength, decays linearly to zero. A constant step never settles (the
last step moves every pixel by ``learning_rate`` of the range); the polish lets
the image settle near an optimum of the regularised objective, keeping the
structure the regularised steps built. Without jitter the image may also align
with the model's pooling grid, which raises the mean activation (what filter
visualization reports) and adds pixel-scale grain: a polish from a quarter of
the step leaves less grain than no polish at all (``benchmarks/internals.py``
reports both), one from the full step about twice as much. Class visualization
does not polish (its logit grows without bound and the picture turns to pixel
noise).

Everything random (starting noise, jitter offsets) comes from
``numpy.random.default_rng(seed)``; with the same seed the result repeats.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from audit.internals._layers import redirected_relus, relus

POLISH_STEP = 0.25   # the polish's first step, as a share of the regularised step

Objective = Callable[..., "object"]   # (model inputs [N, H, W, C], targets [N]) -> values [N], traced


@dataclass(frozen=True)
class Ascent:
    """Settings of the ascent (``internals.*`` in the config).

    Attributes
    ----------
    steps : int
        Gradient steps in all (octaves and polish).
    learning_rate : float
        Step size as a share of the input range (gradient normalised per image).
    jitter : int
        Largest random roll per step, in input pixels (scaled down at lower octaves).
    blur_every : int
        Blur every this many steps (0: never).
    blur_sigma : float
        Blur standard deviation in pixels of the current resolution.
    octaves, octave_scale : int, float
        Resolutions, and the ratio between consecutive ones.
    l2 : float
        Weight of the penalty ``l2 * sum(((x - mid) / half)^2)`` (input in half-range units).
    polish : float
        Share of the steps run last at the input size, no jitter, step and blur decaying to 0.
    noise : float
        Std of the starting noise around mid-range, share of the input range.
    batch_size : int
        Targets (images) per batch.
    seed : int
        Seed of the noise and jitter.
    """

    steps: int = 128
    learning_rate: float = 0.05
    jitter: int = 4
    blur_every: int = 4
    blur_sigma: float = 0.5
    octaves: int = 3
    octave_scale: float = 1.4
    l2: float = 0.0
    polish: float = 0.25       # share of the steps, at the end: input size, no jitter, step and blur decaying to 0
    noise: float = 0.05        # std of the starting noise around mid-range, share of the input range
    batch_size: int = 64
    seed: int = 0

    @classmethod
    def from_config(cls, config, classes: bool = False) -> "Ascent":
        """The ``internals.*`` settings of filter visualization, or with ``classes`` of class
        visualization (``internals.l2`` and ``internals.class_blur_sigma``, no polish).

        Parameters
        ----------
        config : audit.config.Config
            The run's settings (``internals.*`` and ``seed``).
        classes : bool, default False
            Class visualization rather than filter visualization.
        """
        return cls(steps=config.internals.steps, learning_rate=config.internals.learning_rate,
                   jitter=config.internals.jitter, blur_every=config.internals.blur_every,
                   blur_sigma=config.internals.class_blur_sigma if classes else config.internals.blur_sigma,
                   octaves=config.internals.octaves, octave_scale=config.internals.octave_scale,
                   l2=config.internals.l2 if classes else 0.0,
                   polish=0.0 if classes else config.internals.polish,
                   batch_size=config.internals.batch_size, seed=config.seed)


def _gaussian(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(2 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / max(sigma, 1e-6)) ** 2)
    return (k / k.sum()).astype(np.float32)


def blur_kernel(sigma: float, channels: int) -> np.ndarray:
    """float32 ``[k, k, channels, 1]``: the depthwise Gaussian of ``sigma`` pixels (``k = 2 * ceil(2 sigma) + 1``).

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels.
    channels : int
        Input channels ``C``.
    """
    k1 = _gaussian(sigma)
    return np.tile(np.outer(k1, k1)[:, :, None, None], (1, 1, channels, 1)).astype(np.float32)


def unit_objective(classifier, layer):
    """``(key, objective)``: the traced objective ``(model inputs [N, H, W, C], targets [N]) -> [N]`` of
    target ``t``: the pre-softmax logit of class ``t`` for ``t < n_classes``, else the spatial mean of channel
    ``t - n_classes`` of ``layer``'s output (after its activation). Class and filter visualization share it,
    and so the traced step (``step_function``) under ``key``.

    Parameters
    ----------
    classifier : audit.model_io.Classifier
        The model (``n_classes`` outputs).
    layer : keras.layers.Layer or None
        A spatial layer of its model; None: class logits only.
    """
    import tensorflow as tf

    from audit.internals._layers import capturing

    if layer is None:
        def logits_only(inputs, targets):
            return tf.gather(classifier.forward(inputs)[0], targets, batch_dims=1)

        return ("internals.ascent", None), logits_only

    def objective(inputs, targets):
        captured: dict = {}
        with capturing([layer], captured):
            logits, _ = classifier.forward(inputs)
        means = tf.reduce_mean(captured[layer.name], axis=[1, 2])
        units = tf.concat([logits, tf.cast(means, logits.dtype)], axis=1)
        return tf.gather(units, targets, batch_dims=1)

    return ("internals.ascent", layer.name), objective


def step_function(classifier, key, objective: Objective, low: np.ndarray, high: np.ndarray):
    """``(x [N, h, w, C], shift [2], lr, blur, l2, targets [N], redirect, kernel [k, k, C, 1]) -> (x', values [N])``.

    ``x`` is the parameterisation at any resolution ``h x w``; it is resized to the
    model's input size inside (when it differs). ``values`` are the objective's values
    before the step. ``kernel`` is the blur (``blur_kernel``), applied only on the
    steps that blur. With ``redirect`` the model's ReLUs are redirected (a second
    trace; without, the model runs as it is, its ReLUs fused into the convolutions:
    a redirected step costs 1.6 to 1.8 times a plain one on CPU). A model with no
    ReLU to redirect has one trace, used for both.

    Parameters
    ----------
    classifier : audit.model_io.Classifier
        The model; the traces are cached on it under ``(*key, "redirected" | "plain")``.
    key : tuple
        Cache key of the objective.
    objective : callable
        Traced ``(model inputs [N, H, W, C], targets [N]) -> values [N]`` to maximise.
    low, high : np.ndarray
        float32 ``[C]``: the input range per channel; steps are clipped to it.
    """
    import tensorflow as tf

    height, width = classifier.input_size
    channels = classifier.input_shape[2]
    low_t, high_t = tf.constant(low.reshape(1, 1, 1, -1)), tf.constant(high.reshape(1, 1, 1, -1))
    mid, half = (low_t + high_t) / 2.0, (high_t - low_t) / 2.0

    def blur(x, kernel):
        radius = tf.shape(kernel)[0] // 2
        padded = tf.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC")
        return tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID")

    def resized(x):
        full = tf.logical_and(tf.equal(tf.shape(x)[1], height), tf.equal(tf.shape(x)[2], width))
        x = tf.cond(full, lambda: x, lambda: tf.image.resize(x, (height, width), method="bilinear"))
        return tf.ensure_shape(x, (None, height, width, channels))

    def make(redirect: bool):
        def step(x, shift, lr, blur_mix, l2, targets, kernel):
            rolled = tf.roll(x, shift, axis=[1, 2])
            with tf.GradientTape() as tape:
                tape.watch(rolled)
                with redirected_relus(classifier.model) if redirect else contextlib.nullcontext():
                    values = objective(resized(rolled), targets)
                penalty = l2 * tf.reduce_sum(tf.square((rolled - mid) / half), axis=[1, 2, 3])
                total = tf.reduce_sum(values - penalty)
            grads = tf.roll(tape.gradient(total, rolled), -shift, axis=[1, 2])
            grads = grads / (tf.reduce_mean(tf.abs(grads), axis=[1, 2, 3], keepdims=True) + 1e-12)
            x = x + lr * (high_t - low_t) * grads
            x = tf.cond(blur_mix > 0, lambda: x + blur_mix * (blur(x, kernel) - x), lambda: x)
            return tf.clip_by_value(x, low_t, high_t), values

        specs = (tf.TensorSpec((None, None, None, channels), tf.float32), tf.TensorSpec((2,), tf.int32),
                 tf.TensorSpec((), tf.float32), tf.TensorSpec((), tf.float32), tf.TensorSpec((), tf.float32),
                 tf.TensorSpec((None,), tf.int32), tf.TensorSpec((None, None, channels, 1), tf.float32))
        return classifier.function((*key, "redirected" if redirect else "plain"), step, *specs)

    plain = make(False)
    redirected = make(True) if relus(classifier.model) else plain

    def call(x, shift, lr, blur_mix, l2, targets, redirect, kernel):
        return (redirected if redirect else plain)(x, shift, lr, blur_mix, l2, targets, kernel)

    return call


def ascend(step_fn, input_shape: tuple[int, int, int], targets: np.ndarray, low: np.ndarray, high: np.ndarray,
           settings: Ascent) -> tuple[np.ndarray, np.ndarray]:
    """Run the ascent for every target, ``settings.batch_size`` targets per batch.

    Parameters
    ----------
    step_fn : callable
        A ``step_function``.
    input_shape : (int, int, int)
        The model's ``(H, W, C)``.
    targets : np.ndarray
        int ``[N]``: one objective target (channel or class) per image.
    low, high : np.ndarray
        float32 ``[C]``: the input range per channel.
    settings : Ascent
        Steps, schedule, batch size and seed.

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``(images, start)``: float32 ``[N, H, W, C]`` in the model's input space, the
        optimised images and the starting noise they came from.
    """
    targets = np.asarray(targets, np.int32)
    height, width, channels = input_shape
    out = np.zeros((len(targets), height, width, channels), np.float32)
    begin = np.zeros_like(out)
    schedule = list(_schedule(settings, _octave_sizes(height, width, settings.octaves, settings.octave_scale),
                              (height, width)))
    redirect_steps = max(1, (settings.steps - _polish_steps(settings)) // 4)
    lr = np.float32(settings.learning_rate)
    l2 = np.float32(settings.l2)
    still = np.zeros(2, np.int32)
    kernel = blur_kernel(settings.blur_sigma, channels)
    for start in range(0, len(targets), settings.batch_size):
        batch = targets[start:start + settings.batch_size]
        # each batch draws from its own stream, so the result does not depend on the batch size
        rng = np.random.default_rng([settings.seed, start // settings.batch_size])
        mid, span = (low + high) / 2.0, high - low
        h0, w0 = schedule[0][0] if schedule else (height, width)
        x = (mid + settings.noise * span * rng.standard_normal((len(batch), h0, w0, channels))).astype(np.float32)
        x = np.clip(x, low, high).astype(np.float32)
        begin[start:start + len(batch)] = _resize(x, height, width) if (h0, w0) != (height, width) else x
        for n, ((h, w), jitter, scale, blur) in enumerate(schedule, 1):
            if tuple(x.shape[1:3]) != (h, w):
                x = _resize(np.asarray(x), h, w)
            shift = rng.integers(-jitter, jitter + 1, 2).astype(np.int32) if jitter else still
            x, _ = step_fn(x, shift, np.float32(scale * lr), np.float32(blur), l2, batch, n <= redirect_steps,
                           kernel)
        x = np.asarray(x)
        out[start:start + len(batch)] = _resize(x, height, width) if x.shape[1:3] != (height, width) else x
    return out, begin


def _polish_steps(settings: Ascent) -> int:
    return int(round(settings.steps * settings.polish))


def _schedule(settings: Ascent, sizes: list[tuple[int, int]],
              size: tuple[int, int]) -> Iterator[tuple[tuple[int, int], int, float, float]]:
    """Every step's ``(size, jitter, step scale, blur strength)``: the regularised steps,
    octave by octave (``sizes``) at full step, then the polish at the input ``size``,
    without jitter, its step and blur decaying to zero."""
    polish = _polish_steps(settings)
    blurs = bool(settings.blur_every and settings.blur_sigma > 0)
    n = 0
    for (h, w), steps in zip(sizes, _split(settings.steps - polish, len(sizes))):
        jitter = max(0, int(round(settings.jitter * h / size[0])))
        for _ in range(steps):
            n += 1
            yield (h, w), jitter, 1.0, 1.0 if blurs and n % settings.blur_every == 0 else 0.0
    for k in range(polish):
        n += 1
        decay = (polish - k) / (polish + 1)
        yield size, 0, POLISH_STEP * decay, decay if blurs and n % settings.blur_every == 0 else 0.0


def _octave_sizes(height: int, width: int, octaves: int, scale: float) -> list[tuple[int, int]]:
    sizes = []
    for o in range(max(1, octaves) - 1, -1, -1):
        f = scale ** o
        sizes.append((max(4, int(round(height / f))), max(4, int(round(width / f)))))
    return list(dict.fromkeys(sizes))


def _split(steps: int, parts: int) -> list[int]:
    base = [steps // parts] * parts
    for i in range(steps - sum(base)):
        base[-1 - i] += 1
    return base


def _resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    import tensorflow as tf

    return tf.image.resize(x, (h, w), method="bilinear").numpy().astype(np.float32)
