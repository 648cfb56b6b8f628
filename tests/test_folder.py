"""read_folder: labels from sorted subfolders, fitting any size to (C, S, S), bad files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from genpipe.data.folder import read_folder
from genpipe.errors import DataError

from builders import write_png


def one_line_error(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def solid(path: Path, colour: int | tuple[int, int, int], size=(12, 10), fmt=None) -> Path:
    """A one-colour image: grey if `colour` is an int, else RGB."""
    mode = "L" if isinstance(colour, int) else "RGB"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, fmt)
    return path


def png_bytes(size=(32, 32), seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


# --- labels, sources and order -----------------------------------------------------------------


def test_class_subfolders_label_by_sorted_folder_name(tmp_path):
    # grey level encodes the folder, so each image's label can be checked against its pixels
    grey = {"b_cat": 30, "a_dog": 120, "c_owl": 210}
    for folder, value in grey.items():
        for i in range(2):
            solid(tmp_path / folder / f"img{i}.png", value)
    solid(tmp_path / "c_owl" / "deep" / "nested.png", grey["c_owl"])  # label from first level

    out = read_folder(tmp_path, size=8, channels=1)
    assert out.class_names == ["a_dog", "b_cat", "c_owl"]
    assert out.sources == [
        "a_dog/img0.png",
        "a_dog/img1.png",
        "b_cat/img0.png",
        "b_cat/img1.png",
        "c_owl/deep/nested.png",
        "c_owl/img0.png",
        "c_owl/img1.png",
    ]
    assert out.labels.dtype == np.int64
    assert out.labels.tolist() == [0, 0, 1, 1, 2, 2, 2]
    for image, label, source in zip(out.images, out.labels, out.sources, strict=True):
        folder = source.split("/")[0]
        assert out.class_names[label] == folder
        assert np.all(image == grey[folder])
    assert out.skipped == []


def test_flat_folder_is_unlabeled(tmp_path):
    for name in ("z.png", "a.png", "m.png"):
        write_png(tmp_path / name, (9, 9))
    out = read_folder(tmp_path, size=8, channels=3)
    assert out.class_names == []
    assert out.labels.tolist() == [-1, -1, -1]
    assert out.sources == ["a.png", "m.png", "z.png"]
    assert out.images.shape == (3, 3, 8, 8)


def test_two_reads_are_identical(tmp_path):
    for i, size in enumerate([(40, 30), (17, 50), (64, 64)]):
        write_png(tmp_path / "k" / f"{i}.png", size, seed=i)
        write_png(tmp_path / "j" / f"{i}.png", size, mode="L", seed=10 + i)
    first = read_folder(tmp_path, size=16, channels=3)
    second = read_folder(tmp_path, size=16, channels=3)
    assert first.images.tobytes() == second.images.tobytes()
    assert first.labels.tolist() == second.labels.tolist()
    assert first.sources == second.sources == sorted(first.sources)


# --- fitting to (C, S, S) ----------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_mixed_sizes_and_modes_are_all_fitted(tmp_path, channels):
    write_png(tmp_path / "wide.png", (40, 30), mode="RGB", seed=1)
    write_png(tmp_path / "tall.png", (17, 50), mode="L", seed=2)
    write_png(tmp_path / "square.png", (64, 64), mode="RGB", seed=3)
    write_png(tmp_path / "tiny.png", (3, 5), mode="L", seed=4)  # upscaled, not rejected
    out = read_folder(tmp_path, size=16, channels=channels)
    assert out.images.shape == (4, channels, 16, 16)
    assert out.images.dtype == np.uint8
    assert out.skipped == []
    assert all(image.std() > 10 for image in out.images)  # noise survives: not blank


def test_grey_to_three_channels_gives_identical_planes(tmp_path):
    write_png(tmp_path / "grey.png", (20, 20), mode="L", seed=5)
    (image,) = read_folder(tmp_path, size=8, channels=3).images
    assert image.std() > 10
    np.testing.assert_array_equal(image[0], image[1])
    np.testing.assert_array_equal(image[0], image[2])


def test_rgb_to_one_channel_uses_luminance(tmp_path):
    solid(tmp_path / "red.png", (255, 0, 0))
    solid(tmp_path / "white.png", (255, 255, 255))
    out = read_folder(tmp_path, size=4, channels=1)
    assert out.images.shape == (2, 1, 4, 4)
    red, white = out.images  # sorted sources: red.png, white.png
    assert np.all(white == 255)
    assert np.all(np.abs(red.astype(int) - 76) <= 1)  # ITU-R 601-2: L = 0.299 R


def test_same_size_image_is_kept_pixel_for_pixel(tmp_path):
    pixels = np.random.default_rng(6).integers(0, 256, (8, 8, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "exact.png")
    (image,) = read_folder(tmp_path, size=8, channels=3).images
    np.testing.assert_array_equal(image, pixels.transpose(2, 0, 1))


def test_wide_image_is_centre_cropped_not_squeezed(tmp_path):
    pixels = np.zeros((30, 90), np.uint8)
    pixels[:, 30:60] = 255  # black | white | black thirds
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    (image,) = read_folder(tmp_path, size=8, channels=1).images
    # squeezing would keep the black thirds (mean ~85); the centre crop is all white
    assert image.mean() > 200


def test_tall_image_is_centre_cropped(tmp_path):
    pixels = np.full((90, 30), 255, np.uint8)
    pixels[30:60] = 0  # white / black / white thirds
    Image.fromarray(pixels).save(tmp_path / "tall.png")
    (image,) = read_folder(tmp_path, size=8, channels=1).images
    assert image.mean() < 55


def test_jpeg_is_read(tmp_path):
    solid(tmp_path / "photo.jpg", (200, 50, 100), size=(24, 18), fmt="JPEG")
    solid(tmp_path / "noext", (10, 240, 10), size=(24, 18), fmt="JPEG")  # content, not name
    out = read_folder(tmp_path, size=8, channels=3)
    assert out.sources == ["noext", "photo.jpg"]
    green, photo = out.images.astype(int)
    assert np.all(np.abs(photo - np.array([200, 50, 100])[:, None, None]) <= 6)
    assert np.all(np.abs(green - np.array([10, 240, 10])[:, None, None]) <= 6)


def test_camera_jpeg_with_extra_frames_is_read(tmp_path):
    # cameras write MPO: a JPEG plus preview frames; Pillow reports format "MPO"
    first = Image.new("RGB", (16, 16), (0, 0, 250))
    first.save(tmp_path / "camera.jpg", "MPO", save_all=True, append_images=[first.copy()])
    assert Image.open(tmp_path / "camera.jpg").format == "MPO"
    out = read_folder(tmp_path, size=8, channels=3)
    assert out.skipped == []
    assert np.all(np.abs(out.images[0].astype(int) - np.array([0, 0, 250])[:, None, None]) <= 6)


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((8, 8), 0x8000, np.uint16)).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    (image,) = read_folder(tmp_path, size=8, channels=1).images
    assert np.all(image == 0x80)  # 32768 / 65536 of full scale: mid grey, not white


# --- bad files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("cut.png", png_bytes()[: len(png_bytes()) // 2]),
        ("x.png", np.random.default_rng(7).integers(0, 256, 500, np.uint8).tobytes()),
        ("notes.txt", b"these are my notes\n"),
        ("empty.png", b""),
    ],
    ids=["truncated-png", "random-bytes", "text", "empty"],
)
def test_bad_file_fails_naming_it(tmp_path, name, content):
    write_png(tmp_path / "good.png", (10, 10))
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError) as excinfo:
        read_folder(tmp_path, size=8, channels=3)
    message = one_line_error(excinfo)
    assert f"found 1 unreadable or non-image file(s): {name} " in message
    assert "good.png" not in message
    assert "on_bad_file: skip" in message


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_image_formats_other_than_png_and_jpeg_are_bad(tmp_path, fmt):
    write_png(tmp_path / "good.png", (10, 10))
    solid(tmp_path / f"pic.{fmt.lower()}", 128, fmt=fmt)
    with pytest.raises(DataError) as excinfo:
        read_folder(tmp_path, size=8, channels=3)
    assert f"1 unreadable or non-image file(s): pic.{fmt.lower()} " in one_line_error(excinfo)


def test_more_than_five_bad_files_shows_the_first_five(tmp_path):
    write_png(tmp_path / "cls" / "good.png", (10, 10))
    for i in range(7):
        (tmp_path / "cls" / f"bad{i}.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as excinfo:
        read_folder(tmp_path, size=8, channels=3)
    message = one_line_error(excinfo)
    shown = ", ".join(f"cls/bad{i}.png" for i in range(5))
    assert f"found 7 unreadable or non-image file(s): {shown}, ..." in message
    assert "bad5.png" not in message and "bad6.png" not in message


def test_exactly_five_bad_files_shows_no_ellipsis(tmp_path):
    for i in range(5):
        (tmp_path / f"bad{i}.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as excinfo:
        read_folder(tmp_path, size=8, channels=3)
    message = one_line_error(excinfo)
    assert "found 5 unreadable" in message and "bad4.png" in message
    assert "..." not in message


def test_skip_returns_good_images_and_lists_the_bad(tmp_path):
    write_png(tmp_path / "a" / "good.png", (10, 10), seed=1)
    write_png(tmp_path / "b" / "good.png", (10, 10), seed=2)
    (tmp_path / "b" / "broken.png").write_bytes(png_bytes()[:100])
    (tmp_path / "a" / "readme.txt").write_text("hi")
    out = read_folder(tmp_path, size=8, channels=3, on_bad_file="skip")
    assert out.sources == ["a/good.png", "b/good.png"]
    assert out.labels.tolist() == [0, 1]
    assert out.images.shape == (2, 3, 8, 8)
    assert out.skipped == ["a/readme.txt", "b/broken.png"]


def test_skip_with_nothing_readable_fails(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(DataError) as excinfo:
        read_folder(tmp_path, size=8, channels=3, on_bad_file="skip")
    assert "found none readable" in one_line_error(excinfo)


# --- folders that hold no usable images --------------------------------------------------------


def test_empty_folder_fails(tmp_path):
    with pytest.raises(DataError) as excinfo:
        read_folder(tmp_path, size=8, channels=3)
    message = one_line_error(excinfo)
    assert str(tmp_path) in message and "found no files" in message


def test_folder_of_hidden_files_only_fails(tmp_path):
    (tmp_path / ".DS_Store").write_bytes(b"\0\1junk")
    write_png(tmp_path / ".git" / "x.png", (10, 10))
    with pytest.raises(DataError) as excinfo:
        read_folder(tmp_path, size=8, channels=3)
    assert "found no files" in one_line_error(excinfo)


def test_hidden_files_and_folders_are_ignored(tmp_path):
    write_png(tmp_path / "cats" / "a.png", (10, 10))
    (tmp_path / ".DS_Store").write_bytes(b"\0\1junk")
    (tmp_path / "cats" / ".DS_Store").write_bytes(b"\0\1junk")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.png").write_bytes(b"not a png")
    write_png(tmp_path / ".thumbs" / "t.png", (10, 10))
    out = read_folder(tmp_path, size=8, channels=3)  # on_bad_file="fail": nothing counted bad
    assert out.class_names == ["cats"]
    assert out.sources == ["cats/a.png"]
    assert out.skipped == []


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_path_that_is_not_a_directory_fails(tmp_path, kind):
    path = tmp_path / "data.png"
    if kind == "file":
        write_png(path, (10, 10))
    with pytest.raises(DataError) as excinfo:
        read_folder(path, size=8, channels=3)
    message = one_line_error(excinfo)
    assert str(path) in message and "expected a directory" in message
    assert ("found a file" if kind == "file" else "found nothing") in message


def test_images_both_at_top_level_and_in_subfolders_fail(tmp_path):
    write_png(tmp_path / "cats" / "a.png", (10, 10))
    write_png(tmp_path / "dogs" / "b.png", (10, 10))
    write_png(tmp_path / "stray.png", (10, 10))
    with pytest.raises(DataError) as excinfo:
        read_folder(tmp_path, size=8, channels=3)
    message = one_line_error(excinfo)
    assert "found 1 files at the top level (e.g. stray.png) beside 2 subfolders" in message


def test_opaque_images_are_fitted_exactly_as_before(tmp_path):
    # no alpha: convert, then centre-crop and resize, exactly as before compositing existed
    write_png(tmp_path / "rgb.png", (40, 30), mode="RGB", seed=1)
    write_png(tmp_path / "grey.png", (17, 50), mode="L", seed=2)
    noise = np.random.default_rng(3).integers(0, 256, (20, 24, 3), np.uint8)
    Image.fromarray(noise).quantize(16).save(tmp_path / "palette.png")  # no transparent entry
    Image.fromarray(noise).save(tmp_path / "photo.jpg", quality=90)
    for channels in (1, 3):
        out = read_folder(tmp_path, size=16, channels=channels)
        for source, image in zip(out.sources, out.images, strict=True):
            with Image.open(tmp_path / source) as original:
                mode = "L" if channels == 1 else "RGB"
                fitted = ImageOps.fit(original.convert(mode), (16, 16), Image.Resampling.BICUBIC)
            expected = np.asarray(fitted).reshape(16, 16, channels).transpose(2, 0, 1)
            np.testing.assert_array_equal(image, expected, err_msg=source)


# --- transparency ------------------------------------------------------------------------------


def ink_mask(size: int = 16) -> np.ndarray:
    """(size, size) uint8: a bar of 255 on 0, the shape of the 'ink'."""
    mask = np.zeros((size, size), np.uint8)
    mask[4:12, 6:10] = 255
    return mask


def test_black_ink_only_in_alpha_is_composited_onto_white(tmp_path):
    # every colour is black; the shape exists only in alpha. Dropping alpha gave all zeros.
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 3] = ink_mask()
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ink.png")
    for channels in (1, 3):
        (image,) = read_folder(tmp_path, size=16, channels=channels).images
        expected = 255 - ink_mask()  # black ink on the default white background
        assert np.all(image == expected[None])


def test_grey_with_alpha_is_composited(tmp_path):
    la = np.stack([np.zeros((16, 16), np.uint8), ink_mask()], axis=-1)
    Image.fromarray(la, "LA").save(tmp_path / "ink.png")
    (image,) = read_folder(tmp_path, size=16, channels=1).images
    assert np.all(image[0] == 255 - ink_mask())


def test_white_ink_with_soft_edges_keeps_its_edges_on_black(tmp_path):
    # white everywhere, alpha ramps 0..255: on black the image is the alpha itself
    ramp = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    rgba = np.dstack([np.full((16, 16, 3), 255, np.uint8), ramp])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "soft.png")
    (image,) = read_folder(tmp_path, size=16, channels=1, background="black").images
    assert np.all(np.abs(image[0].astype(int) - ramp) <= 1)
    assert len(np.unique(image)) == 16  # soft edges kept, not cut to two levels


def test_half_transparent_red_is_blended_with_the_background(tmp_path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 128)).save(tmp_path / "red.png")
    (white,) = read_folder(tmp_path, size=8, channels=3).images
    (black,) = read_folder(tmp_path, size=8, channels=3, background="black").images
    assert np.all(np.abs(white.astype(int) - np.array([255, 127, 127])[:, None, None]) <= 1)
    assert np.all(np.abs(black.astype(int) - np.array([128, 0, 0])[:, None, None]) <= 1)


@pytest.mark.parametrize("mode", ["P", "L", "RGB"])
def test_transparent_colour_is_composited(tmp_path, mode):
    # PNG's tRNS chunk: one palette entry, grey level or colour is transparent
    ink = ink_mask() > 0
    if mode == "P":
        image = Image.fromarray(ink.astype(np.uint8), "P")
        image.putpalette([90, 90, 90, 0, 0, 0])  # entry 0 (transparent) is grey underneath
        image.save(tmp_path / "t.png", transparency=0)
    elif mode == "L":
        Image.fromarray(np.where(ink, 0, 90).astype(np.uint8)).save(
            tmp_path / "t.png", transparency=90
        )
    else:
        pixels = np.where(ink[..., None], 0, 90).astype(np.uint8).repeat(3, axis=-1)
        Image.fromarray(pixels).save(tmp_path / "t.png", transparency=(90, 90, 90))
    assert Image.open(tmp_path / "t.png").mode == mode
    (image,) = read_folder(tmp_path, size=16, channels=1).images
    assert np.all(image[0] == 255 - ink_mask())  # grey 90 under transparency: white


# --- image size limit --------------------------------------------------------------------------


def test_image_over_max_image_pixels_fails_naming_the_limit(tmp_path):
    write_png(tmp_path / "small.png", (10, 10))
    write_png(tmp_path / "big.png", (20, 12))  # 240 pixels
    with pytest.raises(DataError) as excinfo:
        read_folder(tmp_path, size=8, channels=3, max_image_pixels=200)
    message = one_line_error(excinfo)
    assert "found 1 image(s) over data.max_image_pixels (200 pixels): big.png (20x12)" in message
    assert "unreadable" not in message.split("found")[1]
    assert "small.png" not in message
    assert "(raise data.max_image_pixels to read them, or set data.on_bad_file: skip" in message


def test_image_over_max_image_pixels_is_skipped_under_its_own_reason(tmp_path, caplog):
    write_png(tmp_path / "small.png", (10, 10))
    write_png(tmp_path / "big.png", (20, 12))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    out = read_folder(tmp_path, size=8, channels=3, on_bad_file="skip", max_image_pixels=200)
    assert out.sources == ["small.png"]
    assert out.skipped == ["big.png", "broken.png"]
    assert (
        "skipped 1 unreadable or non-image file(s): broken.png; "
        "1 image(s) over data.max_image_pixels (200 pixels): big.png (20x12)"
    ) in caplog.text


def test_image_at_max_image_pixels_is_read(tmp_path):
    write_png(tmp_path / "exact.png", (20, 10))
    assert read_folder(tmp_path, size=8, channels=3, max_image_pixels=200).skipped == []


def test_max_image_pixels_above_pillows_limit_reads_the_image(tmp_path, monkeypatch):
    # as if Pillow's own limit were 50 pixels: the param, not Pillow's global, decides
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    write_png(tmp_path / "large.png", (20, 12))  # 240 pixels: over 2x Pillow's limit
    out = read_folder(tmp_path, size=8, channels=3, max_image_pixels=1000)
    assert out.skipped == [] and out.images.shape == (1, 3, 8, 8)
    assert Image.MAX_IMAGE_PIXELS == 50  # restored after the read


# --- symbolic links ----------------------------------------------------------------------------


def digit_folder(root: Path, classes: int = 3, per_class: int = 2) -> Path:
    for label in range(classes):
        for i in range(per_class):
            write_png(root / str(label) / f"{i}.png", (10, 10), mode="L", seed=10 * label + i)
    return root


def test_symlinked_class_folder_inside_the_folder_is_read(tmp_path):
    root = digit_folder(tmp_path / "plain")
    (root / "2").rename(root / "store")  # store/ is itself a class now: keep it a folder
    (root / "2").symlink_to("store", target_is_directory=True)
    out = read_folder(root, size=8, channels=1)
    assert out.class_names == ["0", "1", "2", "store"]
    assert out.sources[4:] == ["2/0.png", "2/1.png", "store/0.png", "store/1.png"]


def test_symlinked_class_folder_outside_the_folder_fails_naming_link_and_target(tmp_path):
    # the case: mv data/plain/9 /elsewhere/9 && ln -s /elsewhere/9 data/plain/9
    root = digit_folder(tmp_path / "plain")
    (tmp_path / "elsewhere").mkdir()
    (root / "2").rename(tmp_path / "elsewhere" / "2")
    (root / "2").symlink_to(tmp_path / "elsewhere" / "2", target_is_directory=True)
    with pytest.raises(DataError) as excinfo:
        read_folder(root, size=8, channels=1)
    message = one_line_error(excinfo)
    assert f"found 2 -> {tmp_path / 'elsewhere' / '2'}, outside it" in message


def test_symlinked_file_outside_the_folder_fails_naming_link_and_target(tmp_path):
    root = digit_folder(tmp_path / "plain")
    secret = write_png(tmp_path / "private" / "me.png", (10, 10))
    (root / "1" / "me.png").symlink_to(secret)
    with pytest.raises(DataError) as excinfo:
        read_folder(root, size=8, channels=1)
    assert f"found 1/me.png -> {secret}, outside it" in one_line_error(excinfo)


def test_symlinked_file_inside_the_folder_is_read(tmp_path):
    root = digit_folder(tmp_path / "plain")
    (root / "1" / "again.png").symlink_to(root / "0" / "0.png")
    out = read_folder(root, size=8, channels=1)
    assert "1/again.png" in out.sources
    again, original = out.sources.index("1/again.png"), out.sources.index("0/0.png")
    np.testing.assert_array_equal(out.images[again], out.images[original])
    assert out.labels[again] == 1  # labelled by where the link is


def test_symlinked_root_is_followed(tmp_path):
    real = digit_folder(tmp_path / "disk" / "digits")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "digits").symlink_to(real, target_is_directory=True)
    (real / "1" / "link.png").symlink_to(real / "0" / "0.png")  # inside the root's target
    out = read_folder(tmp_path / "data" / "digits", size=8, channels=1)
    assert out.class_names == ["0", "1", "2"]
    assert len(out.sources) == 7 and "1/link.png" in out.sources


def test_broken_symlink_fails_naming_it(tmp_path):
    root = digit_folder(tmp_path / "plain")
    (root / "0" / "gone.png").symlink_to(root / "0" / "deleted.png")
    with pytest.raises(DataError) as excinfo:
        read_folder(root, size=8, channels=1)
    message = one_line_error(excinfo)
    assert f"found 0/gone.png -> {root / '0' / 'deleted.png'}, which does not exist" in message


def test_broken_symlinked_root_fails_naming_its_target(tmp_path):
    (tmp_path / "data").symlink_to(tmp_path / "unmounted", target_is_directory=True)
    with pytest.raises(DataError) as excinfo:
        read_folder(tmp_path / "data", size=8, channels=1)
    assert f"found a link to {tmp_path / 'unmounted'}" in one_line_error(excinfo)


def test_symlink_loop_fails_naming_it(tmp_path):
    root = digit_folder(tmp_path / "plain")
    (root / "0" / "up").symlink_to(root, target_is_directory=True)
    with pytest.raises(DataError) as excinfo:
        read_folder(root, size=8, channels=1)
    assert f"found 0/up -> {root}, a folder that contains the link" in one_line_error(excinfo)


def test_a_loop_of_two_file_links_fails_naming_it(tmp_path):
    root = digit_folder(tmp_path / "plain")
    (root / "0" / "a.png").symlink_to(root / "0" / "b.png")
    (root / "0" / "b.png").symlink_to(root / "0" / "a.png")
    with pytest.raises(DataError) as excinfo:
        read_folder(root, size=8, channels=1)
    assert "found 0/a.png, a link that leads back to itself" in one_line_error(excinfo)


def test_an_unreadable_class_folder_fails_naming_it(tmp_path, monkeypatch):
    """As a user without read permission on the folder (simulated: root reads anything)."""
    root = digit_folder(tmp_path / "plain")
    listing = Path.iterdir

    def iterdir(self):
        if self.name == "1":
            raise PermissionError(13, "Permission denied", str(self))
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(DataError) as excinfo:
        read_folder(root, size=8, channels=1)
    assert ("expected folders this user can read; found 1, which cannot be listed (Permission "
            "denied)") in one_line_error(excinfo)


def test_a_fifo_in_the_folder_is_skipped_and_said(tmp_path, caplog):
    import os

    write_png(tmp_path / "a" / "0.png", (9, 9))
    os.mkfifo(tmp_path / "a" / "pipe.png")  # reading it would block for ever
    with caplog.at_level("WARNING"):
        result = read_folder(tmp_path, 8, 1)
    assert result.sources == ["a/0.png"]
    said = [r.getMessage() for r in caplog.records if "not a file or folder" in r.getMessage()]
    assert len(said) == 1 and "skipped 1 entry" in said[0] and "a/pipe.png" in said[0]
