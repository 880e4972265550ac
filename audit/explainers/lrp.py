"""Layer-wise relevance propagation (Bach et al., 2015; Montavon et al., 2019).

S. Bach, A. Binder, G. Montavon, F. Klauschen, K.-R. Mueller, W. Samek, "On pixel-wise
explanations for non-linear classifier decisions by layer-wise relevance propagation",
PLOS ONE 10(7), 2015. G. Montavon, A. Binder, S. Lapuschkin, W. Samek, K.-R. Mueller,
"Layer-wise relevance propagation: an overview", in *Explainable AI*, LNCS 11700, 2019
(z^B: Montavon et al., "Explaining nonlinear classification decisions with deep Taylor
decomposition", Pattern Recognition 65, 2017).

The target's pre-softmax logit ``f_t(x)`` is the relevance of output ``t`` (every
other output starts at 0) and is redistributed layer by layer down to the input
pixels; the map is the input relevance summed over channels, signed::

    R_logits  = f_t(x) * onehot(t)
    R_in      = rule_of_layer(a_in, R_out)      (per layer, from the output down)
    map[i, j] = sum_c R_input[i, j, c]

For a linear
layer ``z_k = sum_j a_j w_jk + b_k`` with input ``a`` (BatchNormalization folded in,
see below) and relevance ``R_k`` of its outputs, with ``s(z) = z + e * sign(z)``
(``sign(0) = 1``) and ``(.)+``, ``(.)-`` the positive and negative parts:

- LRP-epsilon: ``R_j = sum_k a_j w_jk / s(z_k) * R_k`` with ``e = epsilon``;
  epsilon -> 0 is LRP-0, which on a ReLU network without biases equals gradient x input.
- LRP-z+ (alpha1-beta0): ``R_j = sum_k (a_j w_jk)+ / s(sum_j (a_j w_jk)+ + b_k+) * R_k``,
  with ``(a w)+ = a+ w+ + a- w-`` (inputs may be negative); ``e = stabilizer``.
- LRP-gamma: for ``z_k > 0``, ``R_j = sum_k (a_j w_jk + gamma (a_j w_jk)+) /
  s(sum_j (a_j w_jk + gamma (a_j w_jk)+) + b_k + gamma b_k+) * R_k``; for ``z_k < 0``
  the same with negative parts (Montavon et al., 2019, generalised to signed inputs
  as Zennit does); ``gamma = 0`` is LRP-0, ``gamma -> inf`` is z+; ``e = stabilizer``.
- z^B, for inputs ``x_i`` in a box ``[l_i, h_i]``: ``R_i = sum_k (x_i w_ik - l_i w_ik+ -
  h_i w_ik-) / s(sum_i (x_i w_ik - l_i w_ik+ - h_i w_ik-) + b_k) * R_k``; ``e = stabilizer``.

Other layers (``audit.explainers._lrp_graph`` sorts them): elementwise activations,
Rescaling, Normalization and a BatchNormalization that follows no linear layer pass
relevance unchanged; max pooling, Flatten, Reshape, Concatenate, padding and dropout
route it where their gradient goes (max pooling: to the winning input); average
pooling, Add and Average split it in proportion to the contributions,
``R_i = x_i / s(sum_i x_i) * R`` (``e = stabilizer``). A BatchNormalization right after a
linear layer is folded into it: ``y = a z + c`` gives kernel ``a w`` and bias ``a b + c``.
Relevance is conserved, ``sum(map) = f_t(x)``, up to what biases and stabilisers absorb
(nothing but ``e`` terms on a network without biases).

Composites (which rule each linear layer gets):

========================  ==========================  ==================  =================
composite                 first layer (on the input)  other convolutions  Dense
========================  ==========================  ==================  =================
``epsilon``               epsilon                     epsilon             epsilon
``epsilon_plus``          z+ (if a convolution)       z+                  epsilon
``epsilon_gamma_box``     z^B (convolution or Dense)  gamma               epsilon
========================  ==========================  ==================  =================

The "first layer" is every linear layer fed by the model input through Rescaling,
Normalization and routing layers only (``low``/``high`` are carried through those
layers to it).

Implementation: one traced function per (model, settings) walks the flattened layer
graph once forward, then back, layer by layer, with the gradient trick: for a rule
whose contributions are ``a'_j w'_jk``, ``R_in = a' * J^T (R / s(z'))`` where ``J^T`` is
the layer's own vector-Jacobian product (``tf.gradients`` of the modified forward
``z'``). Cost per image: one forward pass of the model, then per linear layer its
backward pass (epsilon), plus one forward with clipped weights (z+; two when the
input can be negative), two (gamma; four for signed inputs) or two on the box
bounds (z^B). Weights are read from the variables at run time (the sanity checks
randomise them in place).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from audit.explainers.base import (Explainer, Images, Maps, Targets, check_choice, check_float, register,
                                   run_flat)

COMPOSITES = ("epsilon", "epsilon_plus", "epsilon_gamma_box")


def stabilize(z, e: float):
    """``z + e * sign(z)`` with ``sign(0) = 1``: a denominator that is never 0.

    Parameters
    ----------
    z : tf.Tensor
        Pre-activations (any shape).
    e : float
        The stabiliser, > 0, in the units of ``z``.
    """
    import tensorflow as tf

    return z + tf.where(z >= 0, e, -e)


def rule_of(step, composite: str) -> str:
    """The rule a linear step gets in ``composite``: epsilon, zplus, gamma or box.

    Parameters
    ----------
    step : audit.explainers._lrp_graph.Step
        A ``linear`` step (its ``dense`` and ``bounded_input`` flags decide).
    composite : str
        One of ``COMPOSITES`` (see the table in the module docstring).
    """
    if composite == "epsilon":
        return "epsilon"
    if composite == "epsilon_gamma_box" and step.bounded_input:
        return "box"
    if step.dense:
        return "epsilon"
    return "zplus" if composite == "epsilon_plus" else "gamma"


def linear_relevance(step, rule: str, x, zf, r, lrp: "LRP", box):
    """Relevance ``[B, ...]`` at the input ``x`` of a linear step (the rules of the module docstring).

    Parameters
    ----------
    step : audit.explainers._lrp_graph.Step
        The ``linear`` step (its op, kernel and bias).
    rule : str
        ``epsilon``, ``zplus``, ``gamma`` or ``box`` (``rule_of``).
    x : tf.Tensor
        ``[B, ...]``: the step's gradient-stopped input.
    zf : tf.Tensor
        ``[B, ...]``: its pre-activation output, BatchNormalization folded in.
    r : tf.Tensor
        Relevance of its outputs, ``zf``'s shape.
    lrp : LRP
        The explainer (``epsilon``, ``gamma``, ``stabilizer``).
    box : (tf.Tensor, tf.Tensor) or None
        ``(low, high)`` bounds of ``x``, its shape, for the ``box`` rule.
    """
    import tensorflow as tf

    if rule == "epsilon":
        return x * tf.gradients(zf, x, grad_ys=r / stabilize(zf, lrp.epsilon))[0]
    kernel, bias = step.params()

    def linear(v, k, b=None):
        out = step.op(v, k)
        return out if b is None else out + b

    pos, neg = tf.nn.relu(kernel), tf.minimum(kernel, 0.0)
    if rule == "box":
        low, high = box
        z = zf - linear(low, pos) - linear(high, neg)
        # the gradients with respect to low and high carry the minus signs of z
        grads = tf.gradients(z, [x, low, high], grad_ys=r / stabilize(z, lrp.stabilizer))
        return tf.add_n([v * g for v, g in zip([x, low, high], grads)])
    if rule == "zplus":
        # modified forwards: positive inputs with positive weights (+ positive bias), negative with negative
        terms = [(pos, None if bias is None else tf.nn.relu(bias), neg)]
        selectors = [None]
    else:  # gamma: outputs z > 0 amplify positive contributions, outputs z < 0 negative ones
        gamma = lrp.gamma
        up, down = kernel + gamma * pos, kernel + gamma * neg
        terms = [(up, None if bias is None else bias + gamma * tf.nn.relu(bias), down),
                 (down, None if bias is None else bias + gamma * tf.minimum(bias, 0.0), up)]
        selectors = [tf.cast(zf > 0, r.dtype), tf.cast(zf < 0, r.dtype)]
    if step.nonneg_input:  # the negative-input terms are exactly zero
        zs = [linear(x, k, b) for k, b, _ in terms]
        inputs = [x]
    else:
        xp, xn = tf.nn.relu(x), tf.minimum(x, 0.0)
        zs = [linear(xp, k, b) + linear(xn, k_neg) for k, b, k_neg in terms]
        inputs = [xp, xn]
    seeds = [r / stabilize(z, lrp.stabilizer) * (1.0 if sel is None else sel) for z, sel in zip(zs, selectors)]
    grads = tf.gradients(zs, inputs, grad_ys=seeds)
    return tf.add_n([v * g for v, g in zip(inputs, grads)])


def relevance_function(classifier, lrp: "LRP"):
    """Traced ``(index [B], images [B, H, W, C], targets [B]) -> maps [B, H, W]``, cached per settings of ``lrp``.

    Parameters
    ----------
    classifier : audit.model_io.Classifier
        The model; its final softmax (if any) is passed through, so the pre-softmax
        logit is explained.
    lrp : LRP
        The explainer's settings (composite, epsilon, gamma, stabilizer, low, high).

    Raises
    ------
    ValueError
        For a layer LRP cannot propagate through (``_lrp_graph.build``).
    """
    import tensorflow as tf

    from audit.explainers._lrp_graph import bn_affine, build

    program = build(classifier.model, classifier.softmax)  # checks every layer before anything is traced
    composite, low, high = lrp.composite, lrp.low, lrp.high

    def bound(images, value, reduce):
        edge = reduce(images, axis=(1, 2, 3), keepdims=True) if value is None else tf.constant(value, images.dtype)
        return edge * tf.ones_like(images)

    @tf.autograph.experimental.do_not_convert
    def fn(index, images, targets):  # one item per image: index unused
        values, stopped, pre = {0: images}, {}, {}
        if composite == "epsilon_gamma_box":
            boxes = {0: (bound(images, low, tf.reduce_min), bound(images, high, tf.reduce_max))}
        for i, step in enumerate(program.steps):
            # every step reads gradient-stopped inputs: tf.gradients of a step stays inside the step
            xs = stopped[i] = [tf.stop_gradient(values[s]) for s in step.inputs]
            if step.kind == "linear":
                kernel, bias = step.variables()
                z = step.op(xs[0], kernel)
                z = z if bias is None else z + bias
                if step.bn is not None:
                    a, c = bn_affine(step.bn)
                    z = a * z + c
                pre[i] = z
                out = z if step.activation is None else step.activation(z)
            else:
                out = step.forward(xs)
            values[step.output] = out
            if step.bounded_output and composite == "epsilon_gamma_box":
                lo = step.forward([boxes[s][0] for s in step.inputs])
                hi = step.forward([boxes[s][1] for s in step.inputs])
                boxes[step.output] = (tf.minimum(lo, hi), tf.maximum(lo, hi))

        logits = values[program.output]
        relevance = {program.output: tf.one_hot(targets, tf.shape(logits)[-1], dtype=logits.dtype) * logits}
        for i in reversed(range(len(program.steps))):
            step = program.steps[i]
            r = relevance.pop(step.output, None)
            if r is None:
                continue
            xs, out = stopped[i], values[step.output]
            if step.kind == "pass":
                back = [r]
            elif step.kind == "route":
                back = tf.gradients(out, xs, grad_ys=r)
            elif step.kind == "norm":
                back = [x * g for x, g in zip(xs, tf.gradients(out, xs, grad_ys=r / stabilize(out, lrp.stabilizer)))]
            else:
                rule = rule_of(step, composite)
                box = tuple(tf.stop_gradient(b) for b in boxes[step.inputs[0]]) if rule == "box" else None
                back = [linear_relevance(step, rule, xs[0], pre[i], r, lrp, box)]
            for slot, part in zip(step.inputs, back):
                if part is not None:
                    relevance[slot] = part if slot not in relevance else relevance[slot] + part
        return tf.reduce_sum(relevance.get(0, tf.zeros_like(images)), axis=-1)

    ints = tf.TensorSpec((None,), tf.int32)
    key = ("lrp", composite, lrp.epsilon, lrp.gamma, lrp.stabilizer, low, high)
    return classifier.function(key, fn, ints, classifier.image_spec(), ints)


@register("lrp")
class LRP(Explainer):
    """Layer-wise relevance propagation maps (signed), with a composite of rules.

    Parameters
    ----------
    batch_size : int, default 32
        Images per model call.
    composite : str, default "epsilon_plus"
        ``epsilon_plus`` (z+ for convolutions, epsilon for Dense),
        ``epsilon`` (epsilon everywhere) or ``epsilon_gamma_box`` (z^B on the first
        layer, gamma for convolutions, epsilon for Dense).
    epsilon : float, default 1e-6
        The epsilon of the epsilon rule, > 0, in the units of the pre-activations
        (Zennit's default; larger values absorb weak, contradictory relevance and
        give sparser maps).
    gamma : float, default 0.25
        The gamma of the gamma rule, >= 0.
    stabilizer : float, default 1e-6
        The ``e`` of the z+, gamma, z^B and proportional rules, > 0 (Zennit's):
        only a guard against dividing by 0 (LRP-0 is epsilon and stabilizer -> 0).
    low, high : float, optional
        Bounds of the model's input values for z^B, in the units the model
        takes (before its own Rescaling/Normalization layers, which carry them to the
        first layer), e.g. ``0`` and ``255``; ``None`` (default): each image's own
        minimum and maximum. Used by ``epsilon_gamma_box`` only; images outside them
        are refused.

    Examples
    --------
    >>> maps = audit.explain(model, images, targets, method="lrp", composite="epsilon_gamma_box", low=0, high=255)
    """

    needs_layers = True

    def __init__(self, batch_size: int = 32, composite: str = "epsilon_plus", epsilon: float = 1e-6,
                 gamma: float = 0.25, stabilizer: float = 1e-6, low: float | None = None,
                 high: float | None = None):
        super().__init__(batch_size)
        self.composite = check_choice(self, "composite", composite, COMPOSITES)
        self.epsilon = check_float(self, "epsilon", epsilon)
        self.gamma = check_float(self, "gamma", gamma, 0.0, open_low=False)
        self.stabilizer = check_float(self, "stabilizer", stabilizer)
        self.low = self._bound("low", low)
        self.high = self._bound("high", high)
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise self.fail("high", f"a number > `{self.name}.low` ({self.low:g})", high)

    def _bound(self, param: str, value: Any) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not math.isfinite(value):
            raise self.fail(param, "a finite number or null", value)
        return float(value)

    def maps(self, classifier, images: Images, targets: Targets) -> Maps:
        if self.composite == "epsilon_gamma_box":
            if self.low is not None and images.min() < self.low:
                raise self.fail("low", f"at most the smallest image value {images.min():g}", self.low)
            if self.high is not None and images.max() > self.high:
                raise self.fail("high", f"at least the largest image value {images.max():g}", self.high)
        fn = relevance_function(classifier, self)
        return run_flat(fn, np.arange(len(images)), [], [images, targets], self.batch_size, len(images),
                        reduce=False)
