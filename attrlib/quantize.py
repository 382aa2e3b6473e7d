"""Quantization: fake-quantized networks for quantization-aware fine-tuning, and their int8 form.

A network is quantized in place (`quantize_`) with PyTorch's own quantization machinery:
- every conv and linear weight is a `torch.nn.utils.parametrize` parametrization that
  rounds it per output channel, symmetric, to `weight_bits` (`edge_bits`, 8 by default, for
  the first conv and the last linear layer, as low-bit networks usually do; scales from torch's
  `PerChannelMinMaxObserver` on the current weights, rounding by
  `torch.fake_quantize_per_channel_affine`, straight-through gradient). Being a
  parametrization, `module.weight` *is* the rounded weight for every reader: the forward
  pass, the attribution rules that read weights (LRP, RAP) and the matching maps. Rules
  that swap a module's parameters for modified ones (zennit's, behind EBP) take a
  `plain_weights` copy instead;
- the input of the first convolution and the output of every ReLU pass through a
  `torch.ao.quantization.FakeQuantize` (per tensor, affine, `act_bits`), whose range is
  calibrated on training views (`calibrate_`) and then frozen.

Batch norm stays a float layer. Rounding the conv weights before batch norm is the same as
rounding the folded weights: folding scales each output channel by a constant, and a
per-channel symmetric grid scales with it, so the integers are equal (`to_int8` relies on
this). The range is the narrow one, [-(2^(b-1) - 1), 2^(b-1) - 1], so that re-observing a
rounded weight gives back its own scale.

`to_int8` converts an 8-bit VGG to a real int8 network for CPU inference with torch's
eager-mode quantized modules (fbgemm / x86 kernels): conv + BN + ReLU fused, activation
scales copied from the fake quantizers, the classifier kept in float (with its rounded
weights). The converted network is for size and latency; attribution maps are computed on
the fake-quantized network, which it reproduces within a tested tolerance.
"""

from __future__ import annotations

import copy
import io
import statistics
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.ao.quantization import (
    DeQuantStub,
    FakeQuantize,
    FixedQParamsObserver,
    MinMaxObserver,
    PerChannelMinMaxObserver,
    QConfig,
    QuantStub,
)
from torch.nn.utils import parametrize

from attrlib.masks import effective_parameters
from attrlib.models import eval_mode

WEIGHT_BITS = range(2, 9)  # 2 (ternary) .. 8
ACT_BITS = range(2, 9)


@dataclass(frozen=True)
class QuantSpec:
    """How a network is quantized; stored in its checkpoints (`quantization`)."""

    weight_bits: int = 8  # conv and linear weights, per output channel, symmetric
    act_bits: int = 8  # the first conv's input and every ReLU output, per tensor, affine
    # the first conv and the last linear layer (few weights, most sensitive: the usual
    # exception of low-bit networks); None: weight_bits like the rest
    edge_bits: int | None = 8

    def __post_init__(self) -> None:
        for name, value in (("weight_bits", self.weight_bits), ("edge_bits", self.edge_bits)):
            if value not in WEIGHT_BITS and not (name == "edge_bits" and value is None):
                raise ValueError(f"{name} must be in 2..8, got {value}")
        if self.act_bits not in ACT_BITS:
            raise ValueError(f"act_bits must be in 2..8, got {self.act_bits}")

    def bits_of(self, edge: bool) -> int:
        """The weight width of a layer: `edge_bits` for the first conv and the last linear."""
        return self.edge_bits if edge and self.edge_bits is not None else self.weight_bits

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> QuantSpec:
        unknown = set(values) - {"weight_bits", "act_bits", "edge_bits"}
        if unknown:
            raise ValueError(f"quantization: unknown fields {sorted(unknown)}")
        return cls(**values)


def _narrow_symmetric(bits: int) -> dict:
    """Per-output-channel observer settings of a `bits`-bit weight on the narrow symmetric
    grid [-q, q], q = 2^(bits-1) - 1: the fake quantizer's and the int8 conversion's, so
    that re-observing a rounded weight gives back its own integers."""
    q = 2 ** (bits - 1) - 1
    return {
        "ch_axis": 0,
        "dtype": torch.qint8,
        "qscheme": torch.per_channel_symmetric,
        "quant_min": -q,
        "quant_max": q,
    }


class WeightFakeQuant(nn.Module):
    """Parametrization: a weight rounded per output channel to its own current range, on
    the narrow symmetric grid [-q, q], q = 2^(bits-1) - 1."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.observer = PerChannelMinMaxObserver(**_narrow_symmetric(bits))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # the scale follows the weights as they train: observed afresh on every call
        self.observer.reset_min_max_vals()
        self.observer(weight.detach())
        scale, zero_point = self.observer.calculate_qparams()  # (C_out,), (C_out,)
        return torch.fake_quantize_per_channel_affine(
            weight,
            scale.to(weight.device, weight.dtype),
            zero_point.to(weight.device, torch.int32),
            0,
            self.observer.quant_min,
            self.observer.quant_max,
        )


def activation_fake_quant(spec: QuantSpec) -> FakeQuantize:
    return FakeQuantize(
        observer=MinMaxObserver,
        quant_min=0,
        quant_max=2**spec.act_bits - 1,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )


# under autocast the activations are half precision; the ranges and rounding stay float32
def _quantize_output(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    return module.output_fake_quant(output.float()).to(output.dtype)


def _quantize_input(module: nn.Module, inputs: tuple) -> tuple:
    images = inputs[0]
    return (module.input_fake_quant(images.float()).to(images.dtype), *inputs[1:])


def _weighted(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def quantize_(model: nn.Module, spec: QuantSpec) -> nn.Module:
    """Make `model` fake-quantized as `spec` says (in place; see the module docstring).

    The activation ranges start uncalibrated: call `calibrate_` (a stage does), or load a
    quantized state dict (`engine.load_model` does). Returns `model`.
    """
    if quantization_of(model) is not None:
        raise ValueError(f"the network is quantized already ({quantization_of(model)})")
    convs = getattr(model, "convs", None) or [
        m for m in model.modules() if isinstance(m, nn.Conv2d)
    ]
    if not convs:
        raise ValueError("quantize_: the network has no convolution to take its input")
    device = next(model.parameters()).device
    weighted = _weighted(model)
    linears = [m for m in weighted if isinstance(m, nn.Linear)]
    edges = {id(convs[0]), id(linears[-1] if linears else weighted[-1])}
    for module in weighted:
        bits = spec.bits_of(id(module) in edges)
        parametrize.register_parametrization(module, "weight", WeightFakeQuant(bits).to(device))
    # hooks, not new modules: the layers keep their names, so attribution hooks registered
    # later on a ReLU (Grad-CAM's layer) see the rounded output
    first = convs[0]
    first.input_fake_quant = activation_fake_quant(spec).to(device)
    first.register_forward_pre_hook(_quantize_input)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.output_fake_quant = activation_fake_quant(spec).to(device)
            module.register_forward_hook(_quantize_output)
    model.quantization = spec
    return model


def quantization_of(model: nn.Module) -> QuantSpec | None:
    """The QuantSpec a network was quantized with; None for a float network."""
    return getattr(model, "quantization", None)


def plain_weights(model: nn.Module) -> nn.Module:
    """`model` itself, or for a quantized network a copy that computes the same: its rounded
    weights as plain parameters (`rounded_float_copy`), its activation rounding kept.

    zennit's rules (EBP's positive weights) swap the parameters a module lists in
    `named_parameters(recurse=False)` for modified ones. A parametrized weight is not among
    them (it lives in `parametrizations.weight.original`), so on the network itself the rule
    would leave the signed weight in place and silently draw another map. (A deep copy with
    its parametrizations removed would not do: the copy shares its modules' parametrized
    classes with the original, and removing one deletes the original's `weight` property.)
    """
    if not any(parametrize.is_parametrized(m) for m in model.modules()):
        return model
    copy_ = rounded_float_copy(model).train(model.training)
    modules = dict(copy_.named_modules())
    for name, module in model.named_modules():
        if hasattr(module, "input_fake_quant"):
            modules[name].input_fake_quant = copy.deepcopy(module.input_fake_quant)
            modules[name].register_forward_pre_hook(_quantize_input)
        if hasattr(module, "output_fake_quant"):
            modules[name].output_fake_quant = copy.deepcopy(module.output_fake_quant)
            modules[name].register_forward_hook(_quantize_output)
    return copy_


def activation_quantizers(model: nn.Module) -> list[FakeQuantize]:
    return [m for m in model.modules() if isinstance(m, FakeQuantize)]


@torch.no_grad()
def calibrate_(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Observe the activation ranges on `batches` of images (eval mode, no rounding while
    observing), then freeze them: fine-tuning trains the weights under fixed ranges."""
    quantizers = activation_quantizers(model)
    if not quantizers:
        raise ValueError("calibrate_: the network is not quantized (quantize_ it first)")
    for q in quantizers:
        q.enable_observer()
        q.disable_fake_quant()
    device = next(model.parameters()).device
    seen = 0
    with eval_mode(model):
        for images in batches:
            model(images.to(device))
            seen += 1
    if not seen:
        raise ValueError("calibrate_: no calibration batch")
    for q in quantizers:
        q.disable_observer()
        q.enable_fake_quant()
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes the network's parameters take when stored at their quantized widths: each
    rounded weight at its layer's bits (plus one float32 scale per output channel),
    everything else (biases, batch norm) as float32."""
    total_bits = 0
    for module, name, tensor in effective_parameters(model):
        if parametrize.is_parametrized(module, name):
            bits = getattr(module.parametrizations, name)[0].bits
            total_bits += tensor.numel() * bits + tensor.shape[0] * 32
        else:
            total_bits += tensor.numel() * 32
    return (total_bits + 7) // 8


# ----------------------------------------------------------------------------- int8 on CPU


class Int8VGG(nn.Module):
    """An int8 VGG for CPU inference: quantized features, float classifier."""

    def __init__(self, features: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features  # QuantStub, fused int8 conv + ReLU / max-pool ..., DeQuantStub
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(images), 1))  # (B, K)


def _fixed(fq: FakeQuantize):
    return FixedQParamsObserver.with_args(
        scale=float(fq.scale),
        zero_point=int(fq.zero_point),
        dtype=torch.quint8,
        quant_min=fq.quant_min,
        quant_max=fq.quant_max,
    )


def int8_refusal(spec: QuantSpec | None, family: str) -> str | None:
    """Why a network of `family` quantized as `spec` has no int8 CPU network here
    (`to_int8`), or None when it has one: an 8-bit VGG (every layer and the activations)."""
    if spec is None or (spec.weight_bits, spec.act_bits, spec.bits_of(True)) != (8, 8, 8):
        return f"to_int8 needs an 8-bit quantized network, got {spec}"
    if family != "vgg16_bn":
        return (
            f"to_int8 converts the vgg16_bn family only, not {family} (its residual additions "
            "need quantized adds); evaluate it fake-quantized"
        )
    return None


def to_int8(model: nn.Module, engine: str = "x86") -> Int8VGG:
    """The int8 CPU network of an 8-bit fake-quantized VGG (`quantize_`, calibrated).

    Weights are re-observed after batch-norm folding; with the narrow symmetric range that
    gives back the fake quantizer's integers (module docstring). Other families and lower
    widths are refused: they have no int8 kernels here and are evaluated fake-quantized.
    """
    from torch.ao.quantization import convert, fuse_modules, prepare

    refusal = int8_refusal(quantization_of(model), getattr(model, "architecture", "?"))
    if refusal:
        raise ValueError(refusal)
    first_input = model.features[0].input_fake_quant
    relu_scales = {
        i: module.output_fake_quant
        for i, module in enumerate(model.features)
        if isinstance(module, nn.ReLU)
    }
    float_model = rounded_float_copy(model).cpu().eval()
    features = float_model.features
    groups = []
    for i, module in enumerate(features):
        if isinstance(module, nn.Conv2d):
            bn, relu = features[i + 1], features[i + 2]
            if not (isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)):
                raise ValueError(f"to_int8: features.{i} is not followed by BatchNorm2d + ReLU")
            groups.append([str(i), str(i + 1), str(i + 2)])
    fused = fuse_modules(features, groups)  # conv + BN + ReLU -> one ConvReLU2d, eval mode
    weight_observer = PerChannelMinMaxObserver.with_args(**_narrow_symmetric(8))
    for i, relu_fq in relu_scales.items():
        fused[i - 2].qconfig = QConfig(activation=_fixed(relu_fq), weight=weight_observer)
    stubbed = nn.Sequential(QuantStub(), fused, DeQuantStub())
    stubbed[0].qconfig = QConfig(activation=_fixed(first_input), weight=weight_observer)
    stubbed[2].qconfig = stubbed[0].qconfig
    with quantized_engine(engine), warnings.catch_warnings():
        # torch 2.14 points eager-mode users to torchao's PT2E flow; the int8 kernels these
        # modules call are the same fbgemm / x86 ones
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        prepared = prepare(stubbed, inplace=False)
        int8 = convert(prepared, inplace=False)
    return Int8VGG(int8, float_model.classifier).eval()


def rounded_float_copy(model: nn.Module) -> nn.Module:
    """A float network of the same family whose weights are `model`'s rounded ones (no
    parametrizations, no activation rounding)."""
    from attrlib.architectures import rebuild

    copy_ = rebuild(model.architecture, model.config.to_dict())
    state = {}
    own = model.state_dict()
    modules = dict(model.named_modules())
    for key in copy_.state_dict():
        owner, _, name = key.rpartition(".")
        if name == "weight" and parametrize.is_parametrized(modules[owner], "weight"):
            state[key] = modules[owner].weight.detach()
        else:
            state[key] = own[key]
    copy_.load_state_dict(state)
    return copy_.to(next(model.parameters()).device)


@contextmanager
def quantized_engine(engine: str = "x86") -> Iterator[None]:
    """Inside, torch's quantized kernels are `engine`'s (x86, fbgemm, onednn, qnnpack)."""
    if engine not in torch.backends.quantized.supported_engines:
        raise ValueError(
            f"quantized engine {engine!r} is not available here "
            f"({torch.backends.quantized.supported_engines})"
        )
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _batch_seconds(model: nn.Module, images: torch.Tensor, repeats: int) -> float:
    """Median wall time of one forward pass over `images` (after one warm-up pass)."""
    times = []
    with torch.no_grad(), eval_mode(model):
        model(images)
        for _ in range(repeats):
            start = time.perf_counter()
            model(images)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def deployment_report(
    quantized: nn.Module,
    float_model: nn.Module,
    dataset,
    batch_size: int = 32,
    repeats: int = 5,
    engine: str = "x86",
) -> dict:
    """The int8 network of an 8-bit fake-quantized VGG against it and the float network, in
    this process, on the CPU: stored bytes, seconds per batch of `batch_size` images, class
    mAP on `dataset`, and how far the int8 logits are from the fake-quantized ones. Both
    networks are moved to the CPU."""
    from attrlib.predict import predict, prediction_metrics

    cpu = torch.device("cpu")
    quantized, float_model = quantized.to(cpu), float_model.to(cpu)
    int8 = to_int8(quantized, engine)
    with quantized_engine(engine):
        logits_int8, labels = predict(int8, dataset, cpu, batch_size)
        logits_fake, _ = predict(quantized, dataset, cpu, batch_size)
        logits_float, _ = predict(float_model, dataset, cpu, batch_size)
        images = torch.stack([dataset[i][0] for i in range(min(batch_size, len(dataset)))])
        seconds = {
            "float": _batch_seconds(float_model, images, repeats),
            "int8": _batch_seconds(int8, images, repeats),
        }
    gap = (logits_int8 - logits_fake).abs()  # (N, K)
    return {
        "engine": engine,
        "batch_size": len(images),
        "threads": torch.get_num_threads(),
        "bytes_float": stored_bytes(float_model),
        "bytes_int8": stored_bytes(int8),
        "seconds_per_batch_float": seconds["float"],
        "seconds_per_batch_int8": seconds["int8"],
        "speedup": seconds["float"] / seconds["int8"],
        "map_class_float": prediction_metrics(logits_float, labels)["map_class"],
        "map_class_fake_quantized": prediction_metrics(logits_fake, labels)["map_class"],
        "map_class_int8": prediction_metrics(logits_int8, labels)["map_class"],
        "max_logit_gap": gap.max().item(),
        "max_logit_gap_relative": (gap.max() / logits_fake.abs().max()).item(),
    }


def stored_bytes(model: nn.Module) -> int:
    """Bytes of the network's state dict as `torch.save` writes it."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()
