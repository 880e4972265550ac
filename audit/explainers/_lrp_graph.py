"""The layer graph LRP walks: a Keras model flattened into steps over numbered tensors.

``build(model, softmax)`` turns a Functional or Sequential model (nested models of
either kind inlined, at any depth) into a ``Program``: ``Step`` records in
topological order over numbered tensors ("slots"; slot 0 is the model input). The
``kind`` of a step decides how relevance goes back through it
(``audit.explainers.lrp`` holds the rules):

``linear``  Conv2D, DepthwiseConv2D, SeparableConv2D (its two kernels merged into
            one convolution kernel), Dense: ``z = op(x, kernel) + bias``, then the
            layer's elementwise activation. A BatchNormalization that is the only
            consumer of a linear output without activation is folded into it
            (``bn``; ``Step.params`` gives the folded kernel and bias).
``pass``    elementwise one-to-one layers: activations (Activation, ReLU, LeakyReLU,
            ELU, PReLU), Rescaling, Normalization, a BatchNormalization that cannot
            be folded, and the final softmax (identity: the logits are explained).
``route``   layers that only move or select values: max pooling, Flatten, Reshape,
            Permute, Concatenate, ZeroPadding2D, Cropping2D, Identity, dropout and
            noise layers (identity at inference).
``norm``    sums with positive weights: AveragePooling2D, GlobalAveragePooling2D, Add,
            Average.

Two facts per step are derived once here. ``nonneg_input``: its input is surely
non-negative (the output of a ReLU-type activation, or routed, pooled or summed
from such), so the z+ and gamma rules may skip their negative-input terms, which
are then exactly zero. ``bounded_input``: its input lies in the input domain
(reached from the model input through Rescaling, Normalization and routing only),
so the box bounds of the z^B rule can be carried to it.

A layer of any other type, a linear layer with an activation that is not
elementwise, a channels-first convolution or a subclassed model stops with a
``ValueError`` of one line naming the layer and its type.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

# elementwise activations (``__name__`` of the Keras function): relevance passes them unchanged
ELEMENTWISE = frozenset({"linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish",
                         "hard_silu", "hard_swish", "mish", "sigmoid", "hard_sigmoid", "log_sigmoid", "tanh",
                         "softplus", "softsign", "exponential"})
NONNEGATIVE = frozenset({"relu", "relu6", "sigmoid", "hard_sigmoid", "softplus", "exponential"})
SUPPORTED = ("Conv2D, DepthwiseConv2D, SeparableConv2D, Dense, pooling, BatchNormalization, activations, Add, "
             "Average, Concatenate, Flatten, Reshape, padding, cropping, dropout, Rescaling, Normalization, "
             "nested Functional or Sequential models")


@dataclass
class Step:
    """One layer application.

    ``forward(values)`` computes the output from the input values; ``linear`` steps
    are computed from ``op``, ``variables()`` (or ``params()``) and ``activation``.

    Attributes
    ----------
    kind : str
        ``linear``, ``pass``, ``route`` or ``norm`` (module docstring).
    name : str
        The Keras layer's name.
    inputs, output : tuple of int, int
        Slots read and written (slot 0: the model input).
    forward, op, layer, activation, depthwise, separable, dense, bn, preprocess
        As commented on each field.
    nonneg_output, nonneg_input : bool
        The output / input is surely >= 0 (module docstring).
    bounded_input, bounded_output : bool
        The input / output lies in the input domain, so z^B box bounds reach it.
    """

    kind: str
    name: str
    inputs: tuple[int, ...]
    output: int
    forward: Callable[[list], Any] | None = None
    op: Callable[[Any, Any], Any] | None = None     # linear: (x, kernel) -> linear map of x, no bias
    layer: Any = None                               # linear: the Keras layer holding the variables
    activation: Callable | None = None              # linear: elementwise activation (None: identity)
    depthwise: bool = False                         # linear: kernel [kh, kw, in, multiplier]
    separable: bool = False                         # linear: SeparableConv2D, kernels merged into one
    dense: bool = False                             # linear: a Dense layer (not a convolution)
    bn: Any = None                                  # linear: folded BatchNormalization; pass: unfolded one
    preprocess: bool = False                        # pass: Rescaling / Normalization
    nonneg_output: bool = False
    nonneg_input: bool = False
    bounded_input: bool = False
    bounded_output: bool = False

    def variables(self):
        """``(kernel, bias)`` of the layer itself (``bias`` is None without ``use_bias``).

        A SeparableConv2D's depthwise kernel ``D [kh, kw, in, M]`` and pointwise kernel
        ``P [1, 1, in * M, out]`` are merged into the kernel of the one convolution they
        compose, ``K[h, w, i, o] = sum_j D[h, w, i, j] P[0, 0, i * M + j, o]``: the layer has
        one activation, and its rules must see each input's contribution ``x_i K[., i, o]``
        (z+ applied to the two stages apart loses the relevance of depthwise outputs whose
        contributions are all negative).
        """
        import tensorflow as tf

        bias = self.layer.bias
        if not self.separable:
            # a tf.keras 2 DepthwiseConv2D names its kernel depthwise_kernel; Keras 3's, kernel
            kernel = getattr(self.layer, "depthwise_kernel", None) if self.depthwise else None
            return (self.layer.kernel if kernel is None else kernel), bias
        depthwise, pointwise = self.layer.depthwise_kernel, self.layer.pointwise_kernel
        pointwise = tf.reshape(pointwise, (*depthwise.shape[2:], pointwise.shape[-1]))
        return tf.einsum("hwim,imo->hwio", depthwise, pointwise), bias

    def params(self):
        """``(kernel, bias)`` with the folded BatchNormalization, as tensors (call inside the trace).

        BatchNormalization at inference is ``y = a * z + c`` per channel with
        ``a = gamma / sqrt(moving_variance + epsilon)`` and ``c = beta - a * moving_mean``,
        so the folded layer has kernel ``a * W`` (per output channel) and bias ``a * b + c``.
        """
        import tensorflow as tf

        kernel, bias = self.variables()
        if self.bn is None:
            return kernel, bias
        a, c = bn_affine(self.bn)
        kernel = kernel * (tf.reshape(a, kernel.shape[-2:]) if self.depthwise else a)
        return kernel, c if bias is None else a * bias + c


@dataclass
class Program:
    """A flattened model.

    Attributes
    ----------
    steps : list of Step
        In topological order.
    output : int
        Slot of the model's output (the logits).
    """

    steps: list[Step]
    output: int


def bn_affine(bn):
    """``(a, c)`` of a BatchNormalization at inference, ``y = a * x + c``, as tensors ``[channels]``.

    Parameters
    ----------
    bn : keras.layers.BatchNormalization
        ``a = gamma / sqrt(moving_variance + epsilon)``, ``c = beta - a * moving_mean``.
    """
    import tensorflow as tf

    a = tf.math.rsqrt(tf.convert_to_tensor(bn.moving_variance) + bn.epsilon)
    if bn.gamma is not None:
        a = a * bn.gamma
    c = -a * bn.moving_mean
    return a, c if bn.beta is None else c + bn.beta


def unsupported(layer, why: str = "") -> ValueError:
    """The one-line error for a layer LRP cannot go through.

    Parameters
    ----------
    layer : keras.layers.Layer or keras.Model
        Named in the message with its type.
    why : str, optional
        The reason; without one the message lists the supported layers.
    """
    detail = f" ({why})" if why else f"; supported: {SUPPORTED}"
    return ValueError(f"lrp cannot propagate relevance through layer {layer.name!r} of type "
                      f"{type(layer).__name__}{detail}")


def build(model, softmax: tuple[str, Any] | None = None) -> Program:
    """The model as a ``Program``.

    Parameters
    ----------
    model : keras.Model
        Functional or Sequential, nested models inlined.
    softmax : (str, keras.layers.Layer), optional
        ``Classifier.softmax``: the final softmax, passed through (the logits are explained).

    Raises
    ------
    ValueError
        One line naming an unsupported layer and its type, or a model with several outputs.
    """
    builder = _Builder(softmax)
    outputs = builder.inline(model, [0])
    if len(outputs) != 1:
        raise unsupported(model, f"{len(outputs)} outputs")
    steps = _fold(builder.steps, outputs[0])
    _annotate(steps)
    return Program(steps, outputs[0])


class _Builder:
    def __init__(self, softmax):
        self.softmax = softmax
        self.steps: list[Step] = []
        self.slots = 1

    def new_slot(self) -> int:
        self.slots += 1
        return self.slots - 1

    def inline(self, model, in_slots: list[int]) -> list[int]:
        """Append the steps of ``model`` fed by ``in_slots``; return the slots of its outputs."""
        import tensorflow as tf

        from audit.model_io import keras_of

        keras = keras_of(model)
        legacy = keras.__name__ == "tf_keras"   # a tf.keras 2 Sequential is itself a graph
        graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) and not legacy else model
        if graph is None or not hasattr(graph, "_nodes_by_depth"):
            raise unsupported(model, "not a built Functional or Sequential model")
        if len(graph.inputs) != len(in_slots):
            raise unsupported(model, f"{len(graph.inputs)} inputs")
        slot_of = {id(t): s for t, s in zip(graph.inputs, in_slots)}
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            for node in graph._nodes_by_depth[depth]:
                inputs = node.keras_inputs if legacy else node.input_tensors
                if node.is_input or any(id(t) not in slot_of for t in inputs):
                    continue
                tensors = list({id(t): t for t in inputs}.values())  # unique, in order
                ins = [slot_of[id(t)] for t in tensors]
                layer = node.layer if legacy else node.operation
                outputs = tf.nest.flatten(node.outputs)
                if isinstance(layer, keras.Model):
                    outs = self.inline(layer, ins)
                else:
                    if len(outputs) != 1:
                        raise unsupported(layer, f"{len(outputs)} outputs")
                    call = _legacy_caller(layer, node, tensors) if legacy else _caller(layer, node.arguments, tensors)
                    outs = [self.add(layer, ins, call)]
                for tensor, slot in zip(outputs, outs):
                    slot_of[id(tensor)] = slot
        return [slot_of[id(t)] for t in graph.outputs]

    def add(self, layer, ins: list[int], call: Callable) -> int:
        """Append the step(s) of one layer call; return its output slot."""
        from audit.model_io import keras_of

        L = keras_of(layer).layers
        ins = tuple(ins)
        if self.softmax is not None and layer is self.softmax[1] and self.softmax[0] == "call":
            return self._append(Step("pass", layer.name, ins, self.new_slot(), forward=_first))
        if isinstance(layer, (L.Conv2D, L.DepthwiseConv2D, L.SeparableConv2D, L.Dense)):
            return self._linear(layer, ins)
        if isinstance(layer, L.BatchNormalization):
            return self._append(Step("pass", layer.name, ins, self.new_slot(), forward=call, bn=layer))
        if isinstance(layer, (L.Rescaling, L.Normalization)):
            if getattr(layer, "invert", False):
                raise unsupported(layer, "invert=True")
            return self._append(Step("pass", layer.name, ins, self.new_slot(), forward=call, preprocess=True))
        if isinstance(layer, (L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.PReLU)):
            return self._append(Step("pass", layer.name, ins, self.new_slot(), forward=call,
                                     nonneg_output=_nonneg_activation_layer(layer)))
        if isinstance(layer, (L.MaxPooling2D, L.GlobalMaxPooling2D, L.Flatten, L.Reshape, L.Permute, L.Concatenate,
                              L.ZeroPadding2D, L.Cropping2D, L.Identity, L.Dropout, L.SpatialDropout2D,
                              L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization)):
            return self._append(Step("route", layer.name, ins, self.new_slot(), forward=call))
        if isinstance(layer, (L.AveragePooling2D, L.GlobalAveragePooling2D, L.Add, L.Average)):
            return self._append(Step("norm", layer.name, ins, self.new_slot(), forward=call))
        raise unsupported(layer)

    def _append(self, step: Step) -> int:
        self.steps.append(step)
        return step.output

    def _linear(self, layer, ins: tuple[int, ...]) -> int:
        import keras

        from audit.model_io import keras_of

        L, ops = keras_of(layer).layers, keras.ops
        activation = self._activation(layer)
        if not isinstance(layer, L.Dense) and layer.data_format != "channels_last":
            raise unsupported(layer, "channels_first convolutions are not supported")
        linear = {"layer": layer, "activation": activation}
        if isinstance(layer, L.Dense):
            return self._append(Step("linear", layer.name, ins, self.new_slot(), op=ops.matmul, dense=True, **linear))
        if isinstance(layer, L.Conv2D):
            return self._append(Step("linear", layer.name, ins, self.new_slot(), op=layer.convolution_op, **linear))

        def depthwise(x, kernel):
            return ops.depthwise_conv(x, kernel, strides=layer.strides, padding=layer.padding,
                                      data_format=layer.data_format, dilation_rate=layer.dilation_rate)

        if isinstance(layer, L.DepthwiseConv2D):
            return self._append(Step("linear", layer.name, ins, self.new_slot(), op=depthwise, depthwise=True,
                                     **linear))

        def separable(x, kernel):
            return ops.conv(x, kernel, strides=layer.strides, padding=layer.padding, data_format=layer.data_format,
                            dilation_rate=layer.dilation_rate)

        return self._append(Step("linear", layer.name, ins, self.new_slot(), op=separable, separable=True, **linear))

    def _activation(self, layer) -> Callable | None:
        if self.softmax is not None and layer is self.softmax[1]:
            return None  # the final softmax: the logits are explained
        name = getattr(layer.activation, "__name__", "")
        if name not in ELEMENTWISE:
            raise unsupported(layer, f"activation {name or layer.activation!r} is not elementwise")
        return None if name == "linear" else layer.activation


def _first(values: list):
    return values[0]


def _caller(layer, arguments, tensors) -> Callable[[list], Any]:
    """The layer called at inference on input values given in the order of ``tensors``."""

    def call(values):
        args, kwargs = arguments.fill_in({id(t): v for t, v in zip(tensors, values)})
        return layer(*args, **{**kwargs, "training": False})

    return call


def _legacy_caller(layer, node, tensors) -> Callable[[list], Any]:
    """``_caller`` for a tf.keras 2 graph node, whose arguments map tensor ids (as strings) to values."""

    def call(values):
        by_id = {id(t): v for t, v in zip(tensors, values)}
        pending: dict[str, list] = {}
        for t in node.keras_inputs:
            pending.setdefault(str(id(t)), []).append(by_id[id(t)])
        args, kwargs = node.map_arguments(pending)
        return layer(*args, **{**kwargs, "training": False})

    return call


def _nonneg_activation_layer(layer) -> bool:
    from audit.model_io import keras_of

    keras = keras_of(layer)

    if isinstance(layer, keras.layers.ReLU):
        return float(layer.negative_slope or 0.0) == 0.0 and float(layer.threshold or 0.0) >= 0.0
    if isinstance(layer, keras.layers.Activation):
        return getattr(layer.activation, "__name__", "") in NONNEGATIVE
    return False


def _fold(steps: list[Step], output: int) -> list[Step]:
    """Fold each BatchNormalization that is the only consumer of a linear output without activation."""
    consumers: dict[int, list[Step]] = {}
    for step in steps:
        for slot in step.inputs:
            consumers.setdefault(slot, []).append(step)
    folded = set()
    for step in steps:
        users = consumers.get(step.output, [])
        if step.kind != "linear" or step.activation is not None or step.output == output or len(users) != 1:
            continue
        bn = users[0].bn if users[0].kind == "pass" else None
        if bn is None:
            continue
        axis = bn.axis[0] if isinstance(bn.axis, (list, tuple)) and len(bn.axis) == 1 else bn.axis  # tf.keras 2: [3]
        if not (axis == -1 or (bn.input_spec is not None and axis == bn.input_spec.ndim - 1)):
            continue
        step.bn, step.output = bn, users[0].output
        folded.add(id(users[0]))
    return [step for step in steps if id(step) not in folded]


def _annotate(steps: list[Step]) -> None:
    """Set ``nonneg_input`` / ``nonneg_output`` and ``bounded_input`` / ``bounded_output`` along the program."""
    nonneg: set[int] = set()
    bounded = {0}
    for step in steps:
        step.nonneg_input = all(slot in nonneg for slot in step.inputs)
        step.bounded_input = all(slot in bounded for slot in step.inputs)
        if step.kind == "linear":
            step.nonneg_output = step.bn is None and getattr(step.activation, "__name__", "") in NONNEGATIVE
        elif step.kind in ("route", "norm"):
            step.nonneg_output = step.nonneg_input
        if step.nonneg_output:
            nonneg.add(step.output)
        step.bounded_output = step.bounded_input and (step.kind == "route" or step.preprocess)
        if step.bounded_output:
            bounded.add(step.output)
