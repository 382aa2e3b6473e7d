"""Size, latency and mAP of the int8 CPU network of a VGG against its float network.

The float network is the profile's teacher (`--checkpoint`); it is quantized to 8-bit
weights and activations (`attrlib.quantize`: the ranges calibrated on `--calibration`
batches of the training views, no fine-tuning: this measures the deployed form, not the
training), converted to torch's int8 modules (`to_int8`), and the three are measured in this
process on the validation set (`attrlib.quantize.deployment_report`):

- `bytes_*`: the state dict as `torch.save` writes it;
- `seconds_per_batch_*`: median wall time of one forward pass over `--batch-size` images
  after a warm-up, `--repeats` times; `speedup` = float / int8 on the same images, threads
  and process (`--threads`, default 1: a second process on the cores skews both sides
  less at one thread);
- `map_class_*`: class mAP of the float, fake-quantized and int8 networks;
- `max_logit_gap(_relative)`: how far the int8 logits are from the fake-quantized ones.

    python benchmarks/quantize.py --checkpoint runs/default/teacher-s0/teacher/best.pt \
        --data-root data/synthvoc-default/VOCdevkit/VOC2012 [--out runs/bench/quantize.json]
"""

from __future__ import annotations

import argparse
from itertools import islice
from pathlib import Path

import torch
from provenance import stamp

from attrlib.config import get_profile
from attrlib.data import VOCClassification, eval_transform
from attrlib.engine import epoch_loader
from attrlib.io import write_json_atomic
from attrlib.quantize import QuantSpec, calibrate_, deployment_report, quantize_
from attrlib.stages import build_datasets, load_reference


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="the float VGG (best.pt)")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--profile", default="default", help="its training views calibrate")
    parser.add_argument("--calibration", type=int, default=8, help="training batches")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--engine", default="x86", help="torch's quantized engine")
    parser.add_argument("--out", default="runs/bench/quantize.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    float_model, classes = load_reference(args.checkpoint, args.data_root, cpu)
    quantized, _ = load_reference(args.checkpoint, args.data_root, cpu)
    quantize_(quantized, QuantSpec(8, 8))
    train = build_datasets(args.data_root, get_profile(args.profile), classes)[0]
    loader = epoch_loader(train, args.batch_size, seed=0, view_epoch=0)
    calibrate_(quantized, (views for views, *_ in islice(loader, args.calibration)))
    val = VOCClassification(
        args.data_root, "val", classes, eval_transform(float_model.config.input_size)
    )
    report = deployment_report(
        quantized, float_model, val, args.batch_size, args.repeats, args.engine
    )
    result = {
        **stamp(),
        "checkpoint": args.checkpoint,
        **report,
    }
    print(
        f"int8 {report['bytes_int8'] / 1e3:.0f} kB vs float {report['bytes_float'] / 1e3:.0f} kB "
        f"({report['bytes_float'] / report['bytes_int8']:.1f}x smaller); "
        f"{report['speedup']:.1f}x faster per batch of {report['batch_size']} at "
        f"{report['threads']} thread(s); class mAP float {report['map_class_float']:.4f}, "
        f"fake-quantized {report['map_class_fake_quantized']:.4f}, "
        f"int8 {report['map_class_int8']:.4f}; largest logit gap int8 vs fake-quantized "
        f"{report['max_logit_gap']:.2g} ({100 * report['max_logit_gap_relative']:.2f} %)"
    )
    write_json_atomic(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
