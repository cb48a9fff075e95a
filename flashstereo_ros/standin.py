"""A stand-in for FoundationStereo's two-stage model: same tensor contract, hand-set weights, a real matcher.

feature_runner
  Windowed, zero-sum random-projection patch descriptors of the luminance at 1/4 resolution (224
  channels, 8 groups of 28). The right image's descriptors of group g are taken p = g mod 4 pixels to
  the left, so the GWC volume's plane (g, d) scores full-resolution disparity 4*d + p: the 8 x 48 volume
  holds a 1-pixel-step cost curve over 0..191 (two independent groups per phase). Coarser outputs are
  texture-energy pyramids (1/8, 1/16, 1/32) and stem_2x carries the half-resolution colour guide.
post_runner
  Interleaves the phases into a 192-step cost, aggregates it over a window that widens where the
  pyramid says texture is weak, takes the arg-max with parabolic sub-pixel refinement, and upsamples x4
  with colour-guided (joint bilateral) weights from stem_2x.
  `extra_layers` adds residual 3-D convolution blocks over the volume whose output projection is zero:
  they cost what a heavier cost-aggregation network costs and change no result (for benchmarks).

torch is needed only here, to build and export the model; nothing at run time imports this module.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import yaml

from . import contract
from .tools import require_writable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)
CHANNELS = {"features_left_04": 224, "features_left_08": 192, "features_left_16": 320,
            "features_left_32": 304, "stem_2x": 32}
CV_GROUP = contract.DEFAULT_CV_GROUP
MAX_DISP = contract.DEFAULT_MAX_DISP
PHASES = 4  # full-resolution disparity steps inside one quarter-resolution step
KERNEL = 24  # descriptor kernel width: 12-pixel window, 3-pixel blur margins, room for the 3-pixel phase shift
DESCRIPTOR_WINDOW_SIGMA = 2.0
DESCRIPTOR_BLUR_SIGMA = 0.7
FINE_WINDOW, COARSE_WINDOW = 3, 13  # cost aggregation windows at 1/4 resolution
TEXTURE_SCALE = 0.02  # texture energy at which fine and coarse aggregation weigh the same
GUIDE_SIGMA = 0.12  # colour distance (normalised units) of the upsampling guide
SPATIAL_SIGMA = 2.5  # full-resolution pixels, for the upsampling's spatial weight
SEED = 20251124
ONNX_OPSET = 18  # the dynamo exporter's own opset; TensorRT 10 and ONNX Runtime read it


@dataclasses.dataclass(frozen=True)
class StandInOptions:
    height: int = 480
    width: int = 640
    volume_dtype: str = "float16"  # the post engine's gwc_volume input dtype
    extra_layers: int = 0  # post-stage cost emulation (see module docstring)
    extra_channels: int = 32


def _require_torch():
    try:
        import torch
    except ImportError as exc:  # torch is a generation-time dependency only
        raise SystemExit("the stand-in model generator needs torch: pip install 'flashstereo_ros[standin]'") from exc
    return torch


def descriptor_filters(rng: np.random.Generator, count: int, kernel: int, window: int = 12) -> np.ndarray:
    """Zero-sum, Gaussian-windowed, slightly blurred random filters (count, kernel, kernel), unit norm."""
    import cv2

    ax = np.arange(window) - (window - 1) / 2
    gauss = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * DESCRIPTOR_WINDOW_SIGMA ** 2))
    base = np.zeros((count, kernel, kernel), np.float64)
    offset = (kernel - window) // 2
    for i in range(count):
        pattern = rng.standard_normal((window, window))
        pattern -= (gauss * pattern).sum() / gauss.sum()
        base[i, offset:offset + window, offset:offset + window] = gauss * pattern
        base[i] = cv2.GaussianBlur(base[i], (0, 0), DESCRIPTOR_BLUR_SIGMA, borderType=cv2.BORDER_CONSTANT)
        base[i] /= np.linalg.norm(base[i])
    return base.astype(np.float32)


def build_modules(options: StandInOptions = StandInOptions()):
    """The feature and post torch modules with their deterministic weights."""
    torch = _require_torch()
    nn, F = torch.nn, torch.nn.functional
    rng = np.random.default_rng(SEED)
    c04 = CHANNELS["features_left_04"]
    phase_of_channel = (np.arange(c04) // (c04 // CV_GROUP)) % PHASES
    left_filters = descriptor_filters(rng, c04, KERNEL)
    # the same filters, moved so the right descriptor of phase p is centred p pixels further left
    right_filters = np.zeros_like(left_filters)
    for i, p in enumerate(phase_of_channel):
        right_filters[i, :, : KERNEL - p] = left_filters[i, :, p:]

    # each coarser level pools the finer one's texture energy and picks its channel count from it
    pick08 = rng.permutation(c04)[: CHANNELS["features_left_08"]]
    pick16 = rng.integers(0, CHANNELS["features_left_08"], CHANNELS["features_left_16"])
    pick32 = rng.integers(0, CHANNELS["features_left_16"], CHANNELS["features_left_32"])
    stem_filters = descriptor_filters(rng, CHANNELS["stem_2x"] - 3, 8, window=4)

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a))

    class FeatureRunner(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", tensor(np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)))
            self.register_buffer("std", tensor(np.array(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)))
            luma = np.array(LUMA, np.float32) * np.array(IMAGENET_STD, np.float32)
            self.register_buffer("luma", tensor(luma.reshape(1, 3, 1, 1)))
            self.register_buffer("w_left", tensor(left_filters[:, None]))
            self.register_buffer("w_right", tensor(right_filters[:, None]))
            self.register_buffer("pick08", tensor(pick08.astype(np.int64)))
            self.register_buffer("pick16", tensor(pick16.astype(np.int64)))
            self.register_buffer("pick32", tensor(pick32.astype(np.int64)))
            self.register_buffer("w_stem", tensor(stem_filters[:, None]))

        def gray(self, image):
            normalized = (image / 255.0 - self.mean) / self.std  # what the real engine does first
            return (normalized * self.luma).sum(dim=1, keepdim=True)  # luminance up to a constant offset

        def forward(self, left, right):
            pad = (KERNEL - 4) // 2
            gray_left, gray_right = self.gray(left), self.gray(right)
            f04 = F.conv2d(gray_left, self.w_left, stride=4, padding=pad)
            r04 = F.conv2d(gray_right, self.w_right, stride=4, padding=pad)
            f08 = F.avg_pool2d(f04 * f04, 2).index_select(1, self.pick08)
            f16 = F.avg_pool2d(f08, 2).index_select(1, self.pick16)
            f32 = F.avg_pool2d(f16, 2).index_select(1, self.pick32)
            normalized = (left / 255.0 - self.mean) / self.std
            guide = F.avg_pool2d(normalized, 2)
            texture = F.conv2d(gray_left, self.w_stem, stride=2, padding=3)
            stem = torch.cat([guide, texture], dim=1)
            return f04, f08, f16, f32, r04, stem

    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    # spatial weight of quarter-resolution neighbour (dy, dx) for each pixel of a 4x4 cell
    cell = np.arange(4) + 0.5 - 2.0  # fine pixel centre relative to its cell centre
    spatial = np.zeros((9, 4, 4), np.float32)
    for n, (dy, dx) in enumerate(offsets):
        ddy = cell[:, None] - 4 * dy
        ddx = cell[None, :] - 4 * dx
        spatial[n] = np.exp(-(ddy ** 2 + ddx ** 2) / (2 * SPATIAL_SIGMA ** 2))

    class PostRunner(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("spatial", tensor(spatial[None]))
            blocks = []
            for _ in range(options.extra_layers):
                expand = nn.Conv3d(CV_GROUP, options.extra_channels, 3, padding=1)
                project = nn.Conv3d(options.extra_channels, CV_GROUP, 3, padding=1)
                generator = torch.Generator().manual_seed(SEED)
                with torch.no_grad():
                    expand.weight.copy_(torch.randn(expand.weight.shape, generator=generator) * 0.05)
                    expand.bias.zero_()
                    project.weight.zero_()
                    project.bias.zero_()
                blocks.append(nn.Sequential(expand, nn.ReLU(), project))
            self.extra = nn.ModuleList(blocks)

        def forward(self, features_left_04, features_left_08, features_left_16, features_left_32,
                    features_right_04, stem_2x, gwc_volume):
            volume = gwc_volume.float()
            for block in self.extra:
                volume = volume + block(volume)
            b, g, d, h, w = volume.shape
            per_phase = (volume[:, :PHASES] + volume[:, PHASES:]) * 0.5  # (1, 4, D, h, w), phase p
            cost = per_phase.permute(0, 2, 1, 3, 4).reshape(b, d * PHASES, h, w)  # k = 4*d + p
            texture = (features_left_08.mean(dim=1, keepdim=True)
                       + F.interpolate(features_left_16.mean(dim=1, keepdim=True), scale_factor=2.0, mode="nearest")
                       + F.interpolate(features_left_32.mean(dim=1, keepdim=True), scale_factor=4.0, mode="nearest"))
            texture = F.interpolate(texture, scale_factor=2.0, mode="bilinear", align_corners=False) / 3.0
            fine_weight = texture / (texture + TEXTURE_SCALE)
            fine = F.avg_pool2d(cost, FINE_WINDOW, stride=1, padding=FINE_WINDOW // 2, count_include_pad=False)
            coarse = F.avg_pool2d(cost, COARSE_WINDOW, stride=1, padding=COARSE_WINDOW // 2, count_include_pad=False)
            cost = fine_weight * fine + (1.0 - fine_weight) * coarse

            best = cost.argmax(dim=1, keepdim=True)
            lower = cost.gather(1, (best - 1).clamp(min=0))
            centre = cost.gather(1, best)
            upper = cost.gather(1, (best + 1).clamp(max=d * PHASES - 1))
            curvature = (lower - 2.0 * centre + upper).clamp(max=-1e-6)
            offset = (0.5 * (lower - upper) / curvature).clamp(-0.5, 0.5)
            # at either end of the range one neighbour is the peak itself: no parabola, no offset (it was a
            # constant -0.5 px at zero disparity)
            offset = offset * ((best > 0) & (best < d * PHASES - 1)).to(offset.dtype)
            disp_q = best.to(offset.dtype) + offset  # (1,1,h,w), full-resolution pixels

            guide_q = F.avg_pool2d(stem_2x[:, :3], 2)
            guide_f = F.interpolate(stem_2x[:, :3], scale_factor=2.0, mode="bilinear", align_corners=False)
            disp_pad = F.pad(disp_q, (1, 1, 1, 1), mode="replicate")
            guide_pad = F.pad(guide_q, (1, 1, 1, 1), mode="replicate")
            spatial = self.spatial.repeat(1, 1, h, w)
            colours, values = [], []
            for dy, dx in offsets:
                d_n = disp_pad[:, :, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                g_n = guide_pad[:, :, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                g_n = F.interpolate(g_n, scale_factor=4.0, mode="nearest")
                colours.append(((guide_f - g_n) ** 2).sum(dim=1, keepdim=True))
                values.append(F.interpolate(d_n, scale_factor=4.0, mode="nearest"))
            colours = torch.cat(colours, dim=1)
            values = torch.cat(values, dim=1)
            # relative to the nearest colour, so the best neighbour's exponential is 1: where every colour is
            # far (hard edges) the weights would all underflow to 0 and the ratio would be 0/0
            closest = colours.amin(dim=1, keepdim=True)
            weights = spatial * torch.exp(-(colours - closest) / (2 * GUIDE_SIGMA ** 2))
            return (weights * values).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True)

    return FeatureRunner().eval(), PostRunner().eval()


def example_inputs(options: StandInOptions, device="cpu"):
    """Random images in 0..255 for tracing (RGB, (1,3,H,W) float32)."""
    torch = _require_torch()
    generator = torch.Generator().manual_seed(0)
    shape = (1, 3, options.height, options.width)
    left = (torch.rand(shape, generator=generator) * 255).to(device)
    right = (torch.rand(shape, generator=generator) * 255).to(device)
    return left, right


FORMATS = ("onnx", "pt2")


def options_problem(options: StandInOptions, formats) -> str | None:
    """Why options/formats cannot be exported, or None."""
    size = contract.SIZE_MULTIPLE
    if options.height < size or options.width < size or options.height % size or options.width % size:
        return f"height and width must be positive multiples of {size}, got {options.height}x{options.width}"
    if options.extra_layers < 0 or options.extra_channels < 1:
        return (f"extra layers must be >= 0 and extra channels >= 1, got {options.extra_layers} and "
                f"{options.extra_channels}")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        return f"formats must be one or more of {', '.join(FORMATS)}, got {', '.join(formats) or 'none'}"
    return None


def export(out_dir: str | Path, options: StandInOptions = StandInOptions(), formats=("onnx", "pt2"),
           device: str = "cpu") -> list[Path]:
    """Write feature_runner/post_runner .onnx and .pt2 and onnx.yaml for options' size into out_dir."""
    torch = _require_torch()
    from .gwc import gwc_volume, normalize_groups

    problem = options_problem(options, formats)
    if problem:
        raise ValueError(problem)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    feature, post = build_modules(options)
    feature, post = feature.to(device), post.to(device)
    left, right = example_inputs(options, device)
    volume_dtype = np.dtype(options.volume_dtype)
    with torch.no_grad():
        features = feature(left, right)
        volume = gwc_volume(*(normalize_groups(f.cpu().numpy(), CV_GROUP) for f in (features[0], features[4])),
                            CV_GROUP, MAX_DISP // 4, volume_dtype)
    post_args = tuple(features) + (torch.from_numpy(volume).to(device),)
    written = []
    if "onnx" in formats:
        feature_path, post_path = out / "feature_runner.onnx", out / "post_runner.onnx"
        torch.onnx.export(feature, (left, right), str(feature_path), input_names=list(contract.FEATURE_INPUTS),
                          output_names=list(contract.FEATURE_OUTPUTS), opset_version=ONNX_OPSET, dynamo=True,
                          external_data=False)
        torch.onnx.export(post, post_args, str(post_path), input_names=list(contract.POST_INPUTS),
                          output_names=list(contract.POST_OUTPUTS), opset_version=ONNX_OPSET, dynamo=True,
                          external_data=False)
        written += [feature_path, post_path]
    if "pt2" in formats:
        stages = (("feature_runner", feature, (left, right), contract.FEATURE_OUTPUTS),
                  ("post_runner", post, post_args, contract.POST_OUTPUTS))
        for name, module, args, outputs in stages:
            path = out / f"{name}.pt2"
            names = {contract.IO_NAMES_FILE: json.dumps({"outputs": list(outputs)})}
            program = torch.export.export(module, args)
            program.example_inputs = None  # the archive would otherwise carry tens of MB of random inputs
            torch.export.save(program, str(path), extra_files=names)
            written.append(path)
    config = {
        "max_disp": MAX_DISP, "cv_group": CV_GROUP, "valid_iters": 0,
        "image_size": [options.height, options.width], "model": "flashstereo_ros stand-in",
        "volume_dtype": options.volume_dtype, "extra_layers": options.extra_layers,
    }
    (out / contract.CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    written.append(out / contract.CONFIG_FILE)
    return written


def device_problem(name: str) -> str | None:
    """Why torch cannot trace on the device `name` here, or None."""
    torch = _require_torch()
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        return f"--device {name}: {exc}"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {name}: this torch has no CUDA device (a CPU build, or no GPU visible)"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write the stand-in two-stage FoundationStereo model "
                                                 "(ONNX + torch.export .pt2 + onnx.yaml).")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated: {', '.join(FORMATS)}")
    parser.add_argument("--volume-dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--extra-layers", type=int, default=0,
                        help="residual 3-D conv blocks in the post stage to emulate a heavier engine")
    parser.add_argument("--extra-channels", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="torch device to trace on (cuda for GPU .pt2 programs)")
    args = parser.parse_args(argv)
    options = StandInOptions(args.height, args.width, args.volume_dtype, args.extra_layers, args.extra_channels)
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    problem = options_problem(options, formats) or device_problem(args.device)
    if problem:
        parser.error(problem)
    require_writable(parser, "--out", args.out, make_parents=True, is_folder=True)
    for path in export(args.out, options, formats, args.device):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
