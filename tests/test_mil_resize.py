"""MIL image-resizing ops in tlc's interpreter (issue 12): resize_bilinear (every sampling mode,
against the grids worked out in coremltools' docstring and torch.interpolate),
resize_nearest_neighbor, upsample_bilinear, iOS17 resize, crop, crop_resize (TensorFlow's
crop_and_resize, float64 loops), resample (torch.grid_sample; NumPy padding for reflection /
symmetric) and affine (torch.affine_grid + grid_sample), at fp32 and fp16."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import coremltools as ct
from coremltools.converters.mil import Builder as mb

from milcheck import R, check, f32, precisions, run_mil

INTERPRETER_ONLY = {"resize_bilinear", "resize_nearest_neighbor", "upsample_bilinear", "resize", "crop", "crop_resize",
                    "resample", "affine"}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# resize_bilinear's docstring: Xin = 2 (values 0 and 1 -> the output is the grid itself)
DOC_GRIDS = {
    ("UNALIGN_CORNERS", 5): [0., 0.1, 0.5, 0.9, 1.], ("STRICT_ALIGN_CORNERS", 5): [0., 0.25, 0.5, 0.75, 1.],
    ("ALIGN_CORNERS", 5): [0., 0.25, 0.5, 0.75, 1.], ("DEFAULT", 5): [0., 0.4, 0.8, 1., 1.],
    ("OFFSET_CORNERS", 5): [0.1, 0.3, 0.5, 0.7, 0.9],
    ("UNALIGN_CORNERS", 6): [0., 0., 0.33, 0.67, 1., 1.], ("STRICT_ALIGN_CORNERS", 6): [0., 0.2, 0.4, 0.6, 0.8, 1.],
    ("DEFAULT", 6): [0., 0.33, 0.67, 1., 1., 1.], ("OFFSET_CORNERS", 6): [0.08, 0.25, 0.42, 0.58, 0.75, 0.92],
}


@pytest.mark.parametrize("mode,m", sorted(DOC_GRIDS))
def test_resize_bilinear_docstring_grids(mode, m, tmp_path):
    x = f32([0.0, 1.0]).reshape(1, 1, 1, 2)
    (got,) = run_mil(tmp_path, lambda x: mb.resize_bilinear(x=x, target_size_height=1, target_size_width=m,
                                                            sampling_mode=mode), {"x": x}, "fp32", "resize_bilinear")
    np.testing.assert_allclose(got.ravel(), DOC_GRIDS[(mode, m)], atol=0.005)


@precisions
@pytest.mark.parametrize("mode,align", [("ALIGN_CORNERS", True), ("UNALIGN_CORNERS", False)])
@pytest.mark.parametrize("size", [(7, 9), (3, 2)])
def test_resize_bilinear_is_torch(mode, align, size, precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3, 5, 4)))
    (got,) = run_mil(tmp_path, lambda x: mb.resize_bilinear(x=x, target_size_height=size[0], target_size_width=size[1],
                                                            sampling_mode=mode), {"x": x}, precision, "resize_bilinear")
    check(got, F.interpolate(R(x, precision), size=size, mode="bilinear", align_corners=align), precision, mode)


@precisions
@pytest.mark.parametrize("size", [(10, 8), (3, 3), (5, 7)])
def test_resize_nearest_neighbor_is_torch(size, precision, tmp_path, rng):
    x = f32(rng.normal(size=(1, 2, 5, 4)))
    (got,) = run_mil(tmp_path, lambda x: mb.resize_nearest_neighbor(x=x, target_size_height=size[0], target_size_width=size[1]),
                     {"x": x}, precision, "resize_nearest_neighbor")
    check(got, F.interpolate(R(x, precision), size=size, mode="nearest"), precision, "nearest")


@precisions
@pytest.mark.parametrize("align", [True, False])
@pytest.mark.parametrize("scale", [2, 3])
def test_upsample_bilinear_is_torch(align, scale, precision, tmp_path, rng):
    x = f32(rng.normal(size=(1, 2, 4, 3)))
    (got,) = run_mil(tmp_path, lambda x: mb.upsample_bilinear(x=x, scale_factor_height=scale, scale_factor_width=scale,
                                                              align_corners=align), {"x": x}, precision, "upsample_bilinear")
    check(got, F.interpolate(R(x, precision), scale_factor=scale, mode="bilinear", align_corners=align), precision, "up")


@precisions
@pytest.mark.parametrize("interp,mode,torch_kw", [
    ("LINEAR", "UNALIGN_CORNERS", dict(mode="bilinear", align_corners=False)),
    ("LINEAR", "STRICT_ALIGN_CORNERS", dict(mode="bilinear", align_corners=True)),
    ("NEAREST_NEIGHBOR", "DEFAULT", dict(mode="nearest"))])
def test_resize_ios17(interp, mode, torch_kw, precision, tmp_path, rng):
    x = f32(rng.normal(size=(1, 2, 5, 4)))
    (got,) = run_mil(tmp_path, lambda x: mb.resize(x=x, shape=np.int32([1, 8, 7]), resized_dims=np.uint32(2),
                                                   interpolation_mode=interp, sampling_mode=mode),
                     {"x": x}, precision, "resize", target=ct.target.iOS17)
    check(got, F.interpolate(R(x, precision), size=(8, 7), **torch_kw), precision, "resize")
    # one resized axis; 0 keeps a size
    (got1,) = run_mil(tmp_path, lambda x: mb.resize(x=x, shape=np.int32([0, 6]), resized_dims=np.uint32(1),
                                                    interpolation_mode=interp, sampling_mode=mode),
                      {"x": x}, precision, "resize", target=ct.target.iOS17)
    check(got1, F.interpolate(R(x, precision), size=(5, 6), **torch_kw), precision, "resize 1 axis")


@precisions
def test_crop(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3, 6, 7)))
    (got,) = run_mil(tmp_path, lambda x: mb.crop(x=x, crop_height=[1, 2], crop_width=[0, 3]), {"x": x}, precision, "crop")
    check(got, R(x, precision)[..., 1:4, 0:4], precision, "crop")


def _crop_and_resize(x, boxes, idx, th, tw, extrapolation):
    """tf.image.crop_and_resize in float64 loops (normalized [y1, x1, y2, x2] boxes)."""
    _, C, H, W = x.shape
    out = np.zeros((len(boxes), C, th, tw))
    for n, ((y1, x1, y2, x2), b) in enumerate(zip(boxes, idx)):
        for i in range(th):
            yy = y1 * (H - 1) + i * (y2 - y1) * (H - 1) / (th - 1) if th > 1 else 0.5 * (y1 + y2) * (H - 1)
            for j in range(tw):
                xx = x1 * (W - 1) + j * (x2 - x1) * (W - 1) / (tw - 1) if tw > 1 else 0.5 * (x1 + x2) * (W - 1)
                if not (0 <= yy <= H - 1 and 0 <= xx <= W - 1):
                    out[n, :, i, j] = extrapolation
                    continue
                y0, x0 = int(np.floor(yy)), int(np.floor(xx))
                y1i, x1i = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
                dy, dx = yy - y0, xx - x0
                top = x[b, :, y0, x0] * (1 - dx) + x[b, :, y0, x1i] * dx
                bot = x[b, :, y1i, x0] * (1 - dx) + x[b, :, y1i, x1i] * dx
                out[n, :, i, j] = top * (1 - dy) + bot * dy
    return out


@precisions
@pytest.mark.parametrize("target", ["iOS16", "iOS17"])
def test_crop_resize_is_tf_crop_and_resize(target, precision, tmp_path, rng):
    """iOS16 with one image: coremltools' type inference declares [N, B, C, h, w] for a 5-wide
    roi where its docstring (and Core ML) give [N, 1, C, h, w]; they agree only for B = 1."""
    b = 2 if target == "iOS17" else 1
    x = f32(rng.normal(size=(b, 3, 6, 7)))
    boxes = np.array([[0.1, 0.2, 0.8, 0.9], [0.0, 0.0, 1.0, 1.0], [-0.2, 0.3, 0.5, 1.2]], np.float32)
    idx = np.array([1, 0, 1] if b == 2 else [0, 0, 0], np.int32)
    ref = _crop_and_resize(R(x, precision).numpy(), boxes.astype(np.float64), idx, 4, 5, 0.5)
    kw = dict(target_height=4, target_width=5, normalized_coordinates=True, sampling_mode="ALIGN_CORNERS", pad_value=0.5)
    if target == "iOS17":
        build = lambda x: mb.crop_resize(x=x, boxes=boxes, box_indices=idx, **kw)
    else:
        roi = np.concatenate([idx[:, None].astype(np.float32), boxes], 1).reshape(3, 1, 5, 1, 1)
        build = lambda x: mb.crop_resize(x=x, roi=roi, **kw)
    (got,) = run_mil(tmp_path, build, {"x": x}, precision, "crop_resize", target=getattr(ct.target, target))
    check(got.reshape(ref.shape), ref, precision, "crop_resize")


def _np_grid_sample(x, px, py, mode, pad_mode):
    """Bilinear sampling in float64 on x padded with np.pad (reflect / symmetric: the docstring's
    1-D examples are exactly NumPy's modes) at pixel coordinates px, py [B, Ho, Wo]."""
    P = 16
    xp = np.pad(x, [(0, 0), (0, 0), (P, P), (P, P)], mode={"reflection": "reflect", "symmetric": "symmetric"}[pad_mode])
    B, C = x.shape[:2]
    out = np.zeros((B, C) + px.shape[1:])
    for b in range(B):
        for i in range(px.shape[1]):
            for j in range(px.shape[2]):
                xx, yy = px[b, i, j] + P, py[b, i, j] + P
                x0, y0 = int(np.floor(xx)), int(np.floor(yy))
                dx, dy = xx - x0, yy - y0
                out[b, :, i, j] = (xp[b, :, y0, x0] * (1 - dx) * (1 - dy) + xp[b, :, y0, x0 + 1] * dx * (1 - dy)
                                   + xp[b, :, y0 + 1, x0] * (1 - dx) * dy + xp[b, :, y0 + 1, x0 + 1] * dx * dy)
    return out


@precisions
@pytest.mark.parametrize("sampling", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding", ["constant", "border"])
@pytest.mark.parametrize("align", [True, False])
def test_resample_is_grid_sample(sampling, padding, align, precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3, 5, 6)))
    coords = f32(rng.uniform(-1.3, 1.3, size=(2, 4, 3, 2)))
    (got,) = run_mil(tmp_path, lambda x, c: mb.resample(x=x, coordinates=c, sampling_mode=sampling, padding_mode=padding,
                                                        padding_value=0.0, coordinates_mode="normalized_minus_one_to_one",
                                                        align_corners=align),
                     {"x": x, "c": coords}, precision, "resample", target=ct.target.iOS16)
    ref = F.grid_sample(R(x, precision), R(coords, precision), mode=sampling,
                        padding_mode="zeros" if padding == "constant" else "border", align_corners=align)
    check(got, ref, precision, f"resample {sampling} {padding}")


@precisions
@pytest.mark.parametrize("padding", ["reflection", "symmetric"])
@pytest.mark.parametrize("coordinates_mode", ["unnormalized", "normalized_zero_to_one"])
def test_resample_reflection_symmetric(padding, coordinates_mode, precision, tmp_path, rng):
    x = f32(rng.normal(size=(1, 2, 4, 5)))
    pix = np.stack([rng.uniform(-3, 7, size=(1, 3, 4)), rng.uniform(-3, 6, size=(1, 3, 4))], -1)
    coords = pix if coordinates_mode == "unnormalized" else pix / np.array([4.0, 3.0])  # align_corners: c * (n-1)
    coords = f32(coords)
    (got,) = run_mil(tmp_path, lambda x, c: mb.resample(x=x, coordinates=c, sampling_mode="bilinear", padding_mode=padding,
                                                        padding_value=0.0, coordinates_mode=coordinates_mode,
                                                        align_corners=True),
                     {"x": x, "c": coords}, precision, "resample", target=ct.target.iOS16)
    c = R(coords, precision).numpy()
    px, py = (c[..., 0], c[..., 1]) if coordinates_mode == "unnormalized" else (c[..., 0] * 4, c[..., 1] * 3)
    check(got, _np_grid_sample(R(x, precision).numpy(), px, py, "bilinear", padding), precision, padding)


@precisions
def test_affine_is_affine_grid(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3, 5, 6)))
    theta = f32([[0.9, -0.2, 0.1, 0.3, 1.1, -0.2], [1.2, 0.1, 0.0, -0.1, 0.8, 0.25]])
    (got,) = run_mil(tmp_path, lambda x, t: mb.affine(x=x, transform_matrix=t, output_height=4, output_width=7,
                                                      sampling_mode="bilinear", padding_mode="constant", padding_value=0.0,
                                                      coordinates_mode="normalized_minus_one_to_one", align_corners=True),
                     {"x": x, "t": theta}, precision, "affine")
    t = R(theta, precision).reshape(2, 2, 3)
    g = F.affine_grid(t, (2, 3, 4, 7), align_corners=True)
    check(got, F.grid_sample(R(x, precision), g, mode="bilinear", padding_mode="zeros", align_corners=True), precision, "affine")
