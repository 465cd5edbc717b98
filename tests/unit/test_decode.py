"""JPEG draft decoding and ``extract --exact-decode``, through the real extraction path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clip_retrieval import api
from clip_retrieval.features import store
from clip_retrieval.cli import main
from clip_retrieval.collection.dataset import ImageFiles
from clip_retrieval.models import load_encoder

N = 3


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Noisy 320x240 JPEGs: big enough for draft mode to decode them at 1/4 scale for a 32-pixel model."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    rows = ["image_path,caption"]
    for i in range(N):
        base = np.zeros((240, 320, 3), np.float64)
        base[..., i % 3] = np.linspace(0, 255, 320)[None, :]
        noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"p{i}.jpg", quality=90)
        rows.append(f"p{i}.jpg,照片{i}")
    (folder / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def _plain(encoder, folder, n=N):
    """What an upstream pipeline does: PIL decodes every pixel, then the model's own transform."""
    return torch.stack([encoder.preprocess(Image.open(folder / f"p{i}.jpg").convert("RGB")) for i in range(n)])


def _extract(folder, tiny, out, *extra):
    # no rules file: the expansion cache is another test's concern and costs seconds here
    return main(["extract", "--csv", str(folder / "captions.csv"), "--model", "open_clip:tiny", "--checkpoint",
                 str(tiny), "--out", str(out), "--num-workers", "0", "--device", "cpu", "--quiet",
                 "--rules", str(folder / "no_rules.yaml"), *extra])


def test_exact_decode_gives_the_pixels_and_vectors_of_a_plain_pil_decode(photos, tiny_open_clip, tmp_path):
    encoder = load_encoder("open_clip:tiny", str(tiny_open_clip), device="cpu")
    want_pixels = _plain(encoder, photos)
    exact = ImageFiles([photos / f"p{i}.jpg" for i in range(N)], encoder.preprocess, None)
    assert all(torch.equal(exact[i][1], want_pixels[i]) for i in range(N))

    assert _extract(photos, tiny_open_clip, tmp_path / "exact", "--exact-decode") == 0
    assert _extract(photos, tiny_open_clip, tmp_path / "draft") == 0
    want = encoder.encode_images(want_pixels)
    exact_store, draft_store = store.load(tmp_path / "exact"), store.load(tmp_path / "draft")
    assert exact_store.manifest.image_decode == "exact" and draft_store.manifest.image_decode == "draft"
    assert np.allclose(exact_store.image_features, want.numpy(), atol=1e-6)
    # the draft path really is different, so the comparison above can fail
    assert float(np.abs(draft_store.image_features - want.numpy()).max()) > 1e-4
    cosines = (draft_store.image_features * want.numpy()).sum(-1)
    assert float(cosines.min()) > 0.9


def test_update_in_the_other_decode_mode_reencodes_every_image(photos, tiny_open_clip, tmp_path):
    out = tmp_path / "out"
    encoder = load_encoder("open_clip:tiny", str(tiny_open_clip), device="cpu")
    api.extract_features(csv=photos / "captions.csv", encoder=encoder, out=out, num_workers=0, quiet=True,
                         rules=None)
    result = api.extract_features(csv=photos / "captions.csv", encoder=encoder, out=out, num_workers=0, quiet=True,
                                  update=True, exact_decode=True, rules=None)
    assert result.encoded_images == N and result.reused_images == 0
    manifest = json.loads((out / store.MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest["image_decode"] == "exact"
    assert np.allclose(store.load(out).image_features, encoder.encode_images(_plain(encoder, photos)).numpy(), atol=1e-6)


@pytest.mark.parametrize("mode", ["exact", "draft"])
def test_an_image_query_is_decoded_the_way_its_features_were(photos, tiny_open_clip, tmp_path, mode):
    out = tmp_path / mode
    assert _extract(photos, tiny_open_clip, out, *(["--exact-decode"] if mode == "exact" else [])) == 0
    encoder = load_encoder("open_clip:tiny", str(tiny_open_clip), device="cpu")
    searcher = api.open_searcher(out, encoder=encoder, rules=None, exact=True)
    vector, _ = searcher.image_vector(photos / "p1.jpg")
    # the collection's own photo as the query gives its stored vector back, not a draft/exact neighbour of it
    assert np.allclose(vector, searcher.store.image_features[1], atol=1e-6)


# --- HEIC / HEIF / AVIF and camera RAW (issue 26) -------------------------------------------------

from clip_retrieval.collection import dataset  # noqa: E402
from clip_retrieval.collection.dataset import TooManyPixels, open_image, scan_images  # noqa: E402
from tests.photo_files import halves, write_avif, write_dng, write_heic  # noqa: E402

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 160, 0)


def _colour_at(img: Image.Image, x: float, y: float) -> tuple[int, ...]:
    return img.getpixel((int(x * (img.width - 1)), int(y * (img.height - 1))))


def _is(colour, want, tol=60) -> bool:
    return all(abs(int(c) - w) <= tol for c, w in zip(colour, want))


@pytest.mark.parametrize("write", [write_heic, write_avif], ids=["heic", "avif"])
def test_heic_and_avif_decode_upright_from_a_path_and_from_bytes(tmp_path, write):
    # 96x64, left red, right blue, EXIF orientation 6: shown turned 90 degrees clockwise, red on top
    path = write(tmp_path / f"phone.{write.__name__[6:]}", halves(96, 64), orientation=6)
    for img in (open_image(path), open_image(path.read_bytes(), 32, suffix=path.suffix)):
        assert img.mode == "RGB" and img.size == (64, 96)
        assert _is(_colour_at(img, 0.5, 0.1), RED) and _is(_colour_at(img, 0.5, 0.9), BLUE)


def test_heic_has_the_decode_limits_of_a_jpeg(tmp_path):
    path = write_heic(tmp_path / "big.heic", halves(96, 64))
    with pytest.raises(TooManyPixels, match="96x64"):
        open_image(path, max_pixels=96 * 64 - 1)
    (tmp_path / "cut.heic").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="copy it again"):
        open_image(tmp_path / "cut.heic")
    (tmp_path / "empty.heic").write_bytes(b"")
    with pytest.raises(ValueError, match="empty file"):
        open_image(tmp_path / "empty.heic")


def test_a_raw_file_uses_its_preview_when_large_enough_else_a_half_size_decode(tmp_path):
    scene = halves(96, 64)                                  # the mosaic: red | blue
    big = Image.new("RGB", (400, 300), GREEN)               # a preview as large as a camera's
    with_preview = write_dng(tmp_path / "with_preview.dng", scene, big)
    img = open_image(with_preview, 224)
    assert img.size == (400, 300) and _is(_colour_at(img, 0.5, 0.5), GREEN)
    # a model wanting more than the preview holds gets the mosaic instead, never an upscaled thumbnail
    assert open_image(with_preview, 320).size == (48, 32)

    tiny = write_dng(tmp_path / "tiny_preview.dng", scene, Image.new("RGB", (64, 48), GREEN))
    for img in (open_image(tiny, 224), open_image(tiny.read_bytes(), None, suffix=".dng")):
        assert img.size == (48, 32)                         # half of 96x64
        assert _is(_colour_at(img, 0.1, 0.5), RED, 90) and _is(_colour_at(img, 0.9, 0.5), BLUE, 90)


@pytest.mark.parametrize("preview", [None, Image.new("RGB", (400, 300), GREEN)], ids=["mosaic", "preview"])
def test_a_raw_file_is_turned_upright_either_way(tmp_path, preview):
    path = write_dng(tmp_path / "turned.dng", halves(96, 64), preview, orientation=6)
    img = open_image(path, 224)
    assert img.height > img.width
    if preview is None:
        assert _is(_colour_at(img, 0.5, 0.1), RED, 90) and _is(_colour_at(img, 0.5, 0.9), BLUE, 90)


def test_raw_limits_and_damage_are_skip_reasons(tmp_path):
    path = write_dng(tmp_path / "a.dng", halves(96, 64), None)
    with pytest.raises(TooManyPixels, match="96x64"):
        open_image(path, max_pixels=1000)
    (tmp_path / "junk.nef").write_bytes(b"not a raw file" * 100)
    with pytest.raises(ValueError, match="not a readable RAW file"):
        open_image(tmp_path / "junk.nef")


def _photo_folder(root):
    root.mkdir()
    halves(96, 64).save(root / "plain.jpg")
    write_heic(root / "iphone.heic", halves(96, 64, GREEN, BLUE))
    write_dng(root / "camera.dng", halves(96, 64, BLUE, RED), None)
    return root


def test_heic_and_raw_photos_are_extracted_from_a_folder(tmp_path, tiny_open_clip, cli):
    folder = _photo_folder(tmp_path / "photos")
    # the same DNG under other makers' names: LibRaw tells the format from the content
    for name in ("canon.cr2", "nikon.nef", "sony.arw"):
        (folder / name).write_bytes((folder / "camera.dng").read_bytes())
    ran = (cli("extract", "--images", str(folder), "--model", "open_clip:tiny", "--checkpoint",
                         str(tiny_open_clip), "--out", str(tmp_path / "out"), "--num-workers", "0", "--device",
                         "cpu", "--quiet", "--rules", str(tmp_path / "no_rules.yaml")))
    assert ran.returncode == 0, ran.stderr
    assert "6 images" in ran.stdout and "0 skipped" in ran.stdout
    manifest = store.read_manifest(tmp_path / "out")
    assert sorted(i["path"] for i in manifest.images) == ["camera.dng", "canon.cr2", "iphone.heic", "nikon.nef",
                                                          "plain.jpg", "sony.arw"]


def test_without_the_extras_the_skip_reason_names_the_extra(tmp_path, monkeypatch, tiny_open_clip, cli):
    folder = _photo_folder(tmp_path / "photos")
    monkeypatch.setattr(dataset, "_heif_opener", lambda: "")
    monkeypatch.setattr(dataset, "_rawpy_installed", lambda: False)
    coll = scan_images(folder)
    assert coll.images == ["plain.jpg"]
    reasons = dict(coll.skipped)
    assert "pip install 'clipsou[heic]'" in reasons["iphone.heic"]
    assert "pip install 'clipsou[raw]'" in reasons["camera.dng"]
    ran = (cli("extract", "--images", str(folder), "--model", "open_clip:tiny", "--checkpoint",
                         str(tiny_open_clip), "--out", str(tmp_path / "out"), "--num-workers", "0", "--device",
                         "cpu", "--quiet", "--rules", str(tmp_path / "no_rules.yaml")))
    assert ran.returncode == 0 and "1 images" in ran.stdout and "2 skipped" in ran.stdout
    assert "clipsou[heic]" in ran.stderr and "clipsou[raw]" in ran.stderr
    (folder / "plain.jpg").unlink()   # only photos this install cannot read: the refusal names the extra
    ran = (cli("extract", "--images", str(folder), "--out", str(tmp_path / "out2")))
    assert ran.returncode == 2 and "no images found" in ran.stderr and "pip install 'clipsou[" in ran.stderr


# --- the fast and the exact path on every image mode (issue 22 item 10) ------------------------------

def _mode_files(folder):
    """One file per mode users have: noisy colours, with fully transparent pixels whose colour underneath is black."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (90, 120, 3), np.uint8)
    rgb[:, :40] = 0                                              # black under the transparent strip
    alpha = np.tile(np.linspace(0, 255, 120).astype(np.uint8), (90, 1))
    alpha[:, :40] = 0
    opaque = np.full((90, 120), 255, np.uint8)
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(rgb[..., 1]).save(folder / "l.png")
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(folder / "rgba.png")
    Image.fromarray(np.dstack([rgb, opaque]), "RGBA").save(folder / "rgba_opaque.png")
    Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA").save(folder / "la.png")
    palette = Image.fromarray(rgb).quantize(64)
    palette.save(folder / "p.png")
    black = palette.getpixel((0, 0))                             # the palette entry of the black strip
    palette.save(folder / "p_transparent.png", transparency=black)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.tif")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    Image.fromarray(rng.integers(0, 65536, (90, 120)).astype(np.uint16)).save(folder / "gray16.png")
    return folder


def _shown_on_white(img: Image.Image) -> Image.Image:
    """What a person sees of a picture: colours on a white page, 16 bits scaled to 8."""
    if img.mode == "I;16":
        return Image.fromarray((np.asarray(img, np.float64) / 65535 * 255).astype(np.uint8)).convert("RGB")
    rgba = img.convert("RGBA")
    page = Image.new("RGB", img.size, (255, 255, 255))
    page.paste(rgba, mask=rgba.split()[-1])
    return page


# (file, how it compares with upstream preprocess(Image.open(f))) -- docs/collections.md "Decoding" says the same:
# "same"; "rounding" (CMYK: converted to RGB before resizing, upstream after; 0.015 at most seen); "shown" (what a
# person sees: transparency on white, palette colours resized in colour, 16 bits scaled; upstream differs)
MODES = [("rgb.png", "same"), ("l.png", "same"), ("rgba_opaque.png", "same"), ("cmyk.tif", "rounding"),
         ("cmyk.jpg", "rounding"), ("rgba.png", "shown"), ("la.png", "shown"), ("p_transparent.png", "shown"),
         ("p.png", "shown"), ("gray16.png", "shown")]


@pytest.fixture(scope="module")
def mode_files(tmp_path_factory):
    return _mode_files(tmp_path_factory.mktemp("modes"))


@pytest.fixture(scope="module")
def tiny_encoder(tiny_open_clip):
    return load_encoder("open_clip:tiny", str(tiny_open_clip), device="cpu")


@pytest.mark.parametrize("name, versus_upstream", MODES)
def test_exact_decode_is_upstream_where_documented_and_what_a_person_sees_elsewhere(mode_files, tiny_encoder, name,
                                                                                    versus_upstream):
    path = mode_files / name
    fast = ImageFiles([path], tiny_encoder.preprocess, tiny_encoder.image_size)[0][1]
    exact = ImageFiles([path], tiny_encoder.preprocess, None)[0][1]
    upstream = tiny_encoder.preprocess(Image.open(path))        # open_clip: resize in the file's mode, then RGB
    if path.suffix != ".jpg":   # only JPEG has a reduced-size decode: everything else is the same in both paths
        assert torch.equal(fast, exact)
    gap = float((exact - upstream).abs().max())
    if versus_upstream == "same":
        assert gap < 1e-6
    elif versus_upstream == "rounding":
        assert gap < 0.05
        assert torch.allclose(exact, tiny_encoder.preprocess(Image.open(path).convert("RGB")), atol=1e-6)
    else:
        assert gap > 0.1   # the difference the docs name is real
        # the picture as shown on a white page, resized in colour (never palette indices by nearest neighbour)
        assert torch.allclose(exact, tiny_encoder.preprocess(_shown_on_white(Image.open(path))), atol=1e-6)


def test_transparent_pixels_are_white_not_the_black_stored_under_them(mode_files, tiny_encoder):
    white = tiny_encoder.preprocess(Image.new("RGB", (32, 32), (255, 255, 255)))[:, 0, 0]
    for name in ("rgba.png", "la.png", "p_transparent.png"):
        exact = ImageFiles([mode_files / name], tiny_encoder.preprocess, None)[0][1]
        upstream = tiny_encoder.preprocess(Image.open(mode_files / name))
        assert torch.allclose(exact[:, 2, 2], white, atol=1e-3), name        # the transparent strip, left
        assert float(upstream[:, 2, 2].max()) < float(white.min()), name     # upstream shows it black
