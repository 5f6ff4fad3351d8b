"""/object_info of the image and mask nodes against ComfyUI 0.8's interface.

Transcribed by hand, not computed by our code: from COMPAT.md §9 (core table and the comfy_extras
table) where it lists the class, otherwise from ComfyUI's comfy_extras sources (ImageQuantize,
ImageColorToMask, CropMask, MaskComposite, ImageFlip, ImageRotate, ImageStitch, MaskPreview).
"""
from __future__ import annotations

import pytest

import nodes

R = 16384  # MAX_RESOLUTION
METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
EXTRAS = "comfy_extras."


def _int(name, default, lo, hi, step=None):
    return (name, "INT", default, lo, hi, step)


def _float(name, default, lo, hi, step):
    return (name, "FLOAT", default, lo, hi, step)


def _link(name, type_):
    return (name, type_, None, None, None, None)


def _combo(name, options, default=None):
    return (name, options, default, None, None, None)


# class: (category, python_module, required inputs, optional inputs, outputs)
EXPECTED = {
    "ImageScale": ("image/upscaling", "nodes", [
        _link("image", "IMAGE"), _combo("upscale_method", METHODS), _int("width", 512, 0, R, 1),
        _int("height", 512, 0, R, 1), _combo("crop", ["disabled", "center"])], [], ["IMAGE"]),
    "ImageScaleBy": ("image/upscaling", "nodes", [
        _link("image", "IMAGE"), _combo("upscale_method", METHODS), _float("scale_by", 1.0, 0.01, 8.0, 0.01)],
        [], ["IMAGE"]),
    "ImageBatch": ("image", "nodes", [_link("image1", "IMAGE"), _link("image2", "IMAGE")], [], ["IMAGE"]),
    "LoadImageMask": ("mask", "nodes", [_combo("image", None), _combo("channel", ["alpha", "red", "green", "blue"])],
                      [], ["MASK"]),
    "ImageCrop": ("image/transform", EXTRAS + "nodes_images", [
        _link("image", "IMAGE"), _int("width", 512, 1, R, 1), _int("height", 512, 1, R, 1),
        _int("x", 0, 0, R, 1), _int("y", 0, 0, R, 1)], [], ["IMAGE"]),
    "ImageCompositeMasked": ("image", EXTRAS + "nodes_mask", [
        _link("destination", "IMAGE"), _link("source", "IMAGE"), _int("x", 0, 0, R, 1), _int("y", 0, 0, R, 1),
        ("resize_source", "BOOLEAN", False, None, None, None)], [_link("mask", "MASK")], ["IMAGE"]),
    "MaskToImage": ("mask", EXTRAS + "nodes_mask", [_link("mask", "MASK")], [], ["IMAGE"]),
    "ImageToMask": ("mask", EXTRAS + "nodes_mask", [
        _link("image", "IMAGE"), _combo("channel", ["red", "green", "blue", "alpha"])], [], ["MASK"]),
    "ImageColorToMask": ("mask", EXTRAS + "nodes_mask", [
        _link("image", "IMAGE"), _int("color", 0, 0, 0xFFFFFF, 1)], [], ["MASK"]),
    "SolidMask": ("mask", EXTRAS + "nodes_mask", [
        _float("value", 1.0, 0.0, 1.0, 0.01), _int("width", 512, 1, R, 1), _int("height", 512, 1, R, 1)],
        [], ["MASK"]),
    "InvertMask": ("mask", EXTRAS + "nodes_mask", [_link("mask", "MASK")], [], ["MASK"]),
    "CropMask": ("mask", EXTRAS + "nodes_mask", [
        _link("mask", "MASK"), _int("x", 0, 0, R, 1), _int("y", 0, 0, R, 1), _int("width", 512, 1, R, 1),
        _int("height", 512, 1, R, 1)], [], ["MASK"]),
    "MaskComposite": ("mask", EXTRAS + "nodes_mask", [
        _link("destination", "MASK"), _link("source", "MASK"), _int("x", 0, 0, R, 1), _int("y", 0, 0, R, 1),
        _combo("operation", ["multiply", "add", "subtract", "and", "or", "xor"])], [], ["MASK"]),
    "GrowMask": ("mask", EXTRAS + "nodes_mask", [
        _link("mask", "MASK"), _int("expand", 0, -R, R, 1), ("tapered_corners", "BOOLEAN", True, None, None, None)],
        [], ["MASK"]),
    "FeatherMask": ("mask", EXTRAS + "nodes_mask", [
        _link("mask", "MASK"), _int("left", 0, 0, R, 1), _int("top", 0, 0, R, 1), _int("right", 0, 0, R, 1),
        _int("bottom", 0, 0, R, 1)], [], ["MASK"]),
    "ThresholdMask": ("mask", EXTRAS + "nodes_mask", [
        _link("mask", "MASK"), _float("value", 0.5, 0.0, 1.0, 0.01)], [], ["MASK"]),
    "MaskPreview": ("mask", EXTRAS + "nodes_mask", [_link("mask", "MASK")], [], []),
    "ImageBlend": ("image/postprocessing", EXTRAS + "nodes_post_processing", [
        _link("image1", "IMAGE"), _link("image2", "IMAGE"), _float("blend_factor", 0.5, 0.0, 1.0, 0.01),
        _combo("blend_mode", ["normal", "multiply", "screen", "overlay", "soft_light", "difference"])],
        [], ["IMAGE"]),
    "ImageBlur": ("image/postprocessing", EXTRAS + "nodes_post_processing", [
        _link("image", "IMAGE"), _int("blur_radius", 1, 1, 31, 1), _float("sigma", 1.0, 0.1, 10.0, 0.1)],
        [], ["IMAGE"]),
    "ImageSharpen": ("image/postprocessing", EXTRAS + "nodes_post_processing", [
        _link("image", "IMAGE"), _int("sharpen_radius", 1, 1, 31, 1), _float("sigma", 1.0, 0.1, 10.0, 0.01),
        _float("alpha", 1.0, 0.0, 5.0, 0.01)], [], ["IMAGE"]),
    "ImageQuantize": ("image/postprocessing", EXTRAS + "nodes_post_processing", [
        _link("image", "IMAGE"), _int("colors", 256, 1, 256, 1),
        _combo("dither", ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"])],
        [], ["IMAGE"]),
    "ImageScaleToTotalPixels": ("image/upscaling", EXTRAS + "nodes_post_processing", [
        _link("image", "IMAGE"), _combo("upscale_method", METHODS), _float("megapixels", 1.0, 0.01, 16.0, 0.01),
        _int("resolution_steps", 1, 1, 256)], [], ["IMAGE"]),
    "RepeatImageBatch": ("image/batch", EXTRAS + "nodes_images", [
        _link("image", "IMAGE"), _int("amount", 1, 1, 4096)], [], ["IMAGE"]),
    "ImageFromBatch": ("image/batch", EXTRAS + "nodes_images", [
        _link("image", "IMAGE"), _int("batch_index", 0, 0, 4095), _int("length", 1, 1, 4096)], [], ["IMAGE"]),
    "ImageFlip": ("image/transform", EXTRAS + "nodes_images", [
        _link("image", "IMAGE"), _combo("flip_method", ["x-axis: vertically", "y-axis: horizontally"])],
        [], ["IMAGE"]),
    "ImageRotate": ("image/transform", EXTRAS + "nodes_images", [
        _link("image", "IMAGE"), _combo("rotation", ["none", "90 degrees", "180 degrees", "270 degrees"])],
        [], ["IMAGE"]),
    "ImageStitch": ("image/transform", EXTRAS + "nodes_images", [
        _link("image1", "IMAGE"), _combo("direction", ["right", "down", "left", "up"], "right"),
        ("match_image_size", "BOOLEAN", True, None, None, None), _int("spacing_width", 0, 0, 1024, 2),
        _combo("spacing_color", ["white", "black", "red", "green", "blue"], "white")],
        [_link("image2", "IMAGE")], ["IMAGE"]),
    "GetImageSize": ("image", EXTRAS + "nodes_images", [_link("image", "IMAGE")], [], ["INT", "INT", "INT"]),
}


@pytest.fixture(scope="module")
def registry():
    return nodes.load_registry()


def _check_input(name, spec, expected):
    """type (or combo options; None = a file list), then default/min/max/step: each stated value
    must be there, and a number input must not carry bounds ComfyUI does not declare."""
    ename, etype, default, lo, hi, step = expected
    assert name == ename
    type_, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if etype is None:
        assert isinstance(type_, list), name
    else:
        assert type_ == etype, name
    for key, value in (("default", default), ("min", lo), ("max", hi), ("step", step)):
        if value is not None:
            assert opts.get(key) == value, (name, key)
        elif etype in ("INT", "FLOAT") and key != "default":
            assert key not in opts, (name, key)


@pytest.mark.parametrize("class_type", sorted(EXPECTED))
def test_object_info_matches_comfyui(registry, class_type):
    category, module, required, optional, outputs = EXPECTED[class_type]
    info = registry.object_info_for(class_type)
    assert info is not None, class_type
    assert (info["category"], info["python_module"], info["output"]) == (category, module, outputs)
    assert info["input_order"]["required"] == [r[0] for r in required]
    assert info["input_order"].get("optional", []) == [o[0] for o in optional]
    for expected in required:
        _check_input(expected[0], info["input"]["required"][expected[0]], expected)
    for expected in optional:
        _check_input(expected[0], info["input"]["optional"][expected[0]], expected)


def test_flags_and_display_names(registry):
    assert registry.object_info_for("ImageBatch")["deprecated"] is True
    assert registry.object_info_for("MaskPreview")["output_node"] is True
    assert registry.object_info_for("GetImageSize")["output_name"] == ["width", "height", "batch_size"]
    assert registry.object_info_for("GetImageSize")["input"]["hidden"] == {"unique_id": "UNIQUE_ID"}
    assert registry.object_info_for("LoadImageMask")["input"]["required"]["image"][1] == {"image_upload": True}
    names = {"ImageScale": "Upscale Image", "ImageScaleBy": "Upscale Image By", "ImageBatch": "Batch Images",
             "LoadImageMask": "Load Image (as Mask)", "ImageToMask": "Convert Image to Mask",
             "MaskToImage": "Convert Mask to Image", "GrowMask": "Grow Mask", "ImageStitch": "Image Stitch"}
    for class_type, display in names.items():
        assert registry.object_info_for(class_type)["display_name"] == display


def test_our_grid_node_does_not_take_comfyuis_dataset_name(registry):
    assert "ImageGrid" not in registry
    info = registry.object_info_for("ImageBatchGrid")
    assert info["category"] == "image" and info["input_order"]["required"] == ["images", "columns", "gap",
                                                                                "gap_color"]
