"""What a file's metadata claims, read beside the signal: every fixture is made here, the C2PA one
signed with a throwaway certificate made here too."""

from __future__ import annotations

import datetime
import io
import json
import struct

import numpy as np
import pandas as pd
import pytest
from PIL import Image, PngImagePlugin

from leakstore.featurize.provenance import NONE, Provenance, agrees, named_class, read_provenance

DST = "http://cv.iptc.org/newscodes/digitalsourcetype/"


def pixels(seed=0, size=(96, 88)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


def jpeg(img=None, **kw) -> bytes:
    b = io.BytesIO()
    (img or pixels()).save(b, "JPEG", quality=92, **kw)
    return b.getvalue()


def with_app1(data: bytes, payload: bytes) -> bytes:
    """A JPEG with one more APP1 segment right after SOI."""
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def xmp_packet(body: str) -> bytes:
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f"{body}</rdf:RDF></x:xmpmeta>"
    ).encode()


def xmp_jpeg(body: str) -> bytes:
    return with_app1(jpeg(), b"http://ns.adobe.com/xap/1.0/\x00" + xmp_packet(body))


def a1111_png() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a portrait\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Model: sd_xl_base_1.0")
    b = io.BytesIO()
    pixels().save(b, "PNG", pnginfo=info)
    return b.getvalue()


def camera_jpeg() -> bytes:
    exif = Image.Exif()
    exif[271], exif[272], exif[305] = "Canon", "Canon EOS 5D Mark IV", "Firmware 1.0"
    return jpeg(exif=exif.tobytes())


IPTC_AI = (
    '<rdf:Description xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
    f'Iptc4xmpExt:DigitalSourceType="{DST}trainedAlgorithmicMedia"/>'
)


def test_each_source_is_read_for_what_it_says():
    p = read_provenance(a1111_png())
    assert (p.claim, p.source, p.kind) == ("AUTOMATIC1111 web UI", "png-text", "generator")
    assert "sd_xl_base_1.0" in p.detail and p.error == "" and p.c2pa_valid is None
    p = read_provenance(xmp_jpeg(IPTC_AI))
    assert (p.claim, p.source, p.kind) == ("trainedAlgorithmicMedia", "iptc", "generator") and p.error == ""
    p = read_provenance(camera_jpeg())
    assert (p.claim, p.source, p.kind) == ("camera:Canon EOS 5D Mark IV", "exif", "camera")
    assert read_provenance(jpeg()) == NONE  # stripped: nothing claimed, nothing wrong


def test_a_generators_name_in_software_or_creator_tool_is_a_generator_claim():
    exif = Image.Exif()
    exif[305] = "Adobe Photoshop 25.0"
    assert read_provenance(jpeg(exif=exif.tobytes())).kind == "tool"
    exif[305] = "Midjourney v6"
    assert read_provenance(jpeg(exif=exif.tobytes())).kind == "generator"
    tool = '<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="Adobe Firefly"/>'
    assert read_provenance(xmp_jpeg(tool)).kind == "generator"


@pytest.mark.parametrize(
    "packet, why",
    [
        (b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF><unclosed", "truncated XMP packet"),
        (b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF><a></b></rdf:RDF></x:xmpmeta>", "malformed XMP packet"),
        (b'<x:xmpmeta><!DOCTYPE x [<!ENTITY e "e">]></x:xmpmeta>', "DTD"),
    ],
)
def test_a_broken_xmp_block_is_recorded_and_the_other_sources_still_read(packet, why):
    exif = Image.Exif()
    exif[271], exif[272] = "Nikon", "Z 6"
    p = read_provenance(with_app1(jpeg(exif=exif.tobytes()), b"http://ns.adobe.com/xap/1.0/\x00" + packet))
    assert p.error.startswith("iptc: ") and why in p.error
    assert (p.claim, p.source) == ("camera:Nikon Z 6", "exif")


def test_a_truncated_png_chunk_is_recorded_not_raised():
    data = a1111_png()
    cut = data[: data.find(b"tEXt") + 20]  # the text chunk cut short, nothing after it
    p = read_provenance(cut)
    assert "png-text: truncated tEXt chunk" in p.error


def test_the_claim_and_the_verdict_are_compared_the_way_they_point():
    names = ["real", "midjourney_2022", "stable_diffusion_1x"]
    gen, cam = Provenance("Midjourney", "exif", "generator"), Provenance("camera:Canon", "exif", "camera")
    assert agrees(cam, "real", names, "real") is True
    assert agrees(cam, "midjourney_2022", names, "real") is False  # a camera claim on a generator's image
    assert agrees(cam, "unknown", names, "real") is False
    assert agrees(cam, "midjourney_2022", names, None) is None  # a model without a real class cannot say
    assert agrees(gen, "midjourney_2022", names, "real") is True
    assert agrees(gen, "stable_diffusion_1x", names, "real") is False  # another generator than the one named
    assert agrees(gen, "real", names, "real") is False
    assert agrees(Provenance("some tool", "exif", "generator"), "unknown", names, "real") is True
    assert agrees(NONE, "real", names, "real") is None
    assert agrees(Provenance("Photoshop", "exif", "tool"), "real", names, "real") is None
    assert named_class("Stable Diffusion", names) == "stable_diffusion_1x" and named_class("AUTOMATIC", names) is None


# ---------------------------------------------------------------------------- C2PA
def _signer():
    """A C2PA signer from a throwaway certificate chain (a test root and its end-entity certificate)."""
    c2pa = pytest.importorskip("c2pa", reason="the c2pa extra (pip install leakstore[c2pa]) is not installed")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def usage(sign: bool):
        return x509.KeyUsage(sign, False, False, False, False, not sign, not sign, False, False)

    def cert(subject, issuer, key, issuer_key, ca: bool):
        b = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(usage(not ca), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        if not ca:
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            b = b.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
        return b.sign(issuer_key, hashes.SHA256())

    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = cert("leakstore test root", "leakstore test root", root_key, root_key, True)
    leaf = cert("leakstore test signer", "leakstore test root", key, root_key, False)
    pem = serialization.Encoding.PEM
    chain = leaf.public_bytes(pem) + root.public_bytes(pem)
    private = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return c2pa, c2pa.Signer.from_info(c2pa.C2paSignerInfo(b"es256", chain, private, None)), root.public_bytes(pem)


def c2pa_jpeg(source_type="trainedAlgorithmicMedia", name="Test Image Generator") -> bytes:
    return c2pa_signed(source_type, name)[0]


def c2pa_signed(source_type="trainedAlgorithmicMedia", name="Test Image Generator") -> tuple[bytes, bytes]:
    """A JPEG with a C2PA manifest signed under a throwaway root, and that root's certificate (PEM)."""
    c2pa, signer, root = _signer()
    manifest = {
        "claim_generator_info": [{"name": name, "version": "1.0"}],
        "title": "image.jpg",
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": DST + source_type}]},
            }
        ],
    }
    out = io.BytesIO()
    c2pa.Builder(json.dumps(manifest)).sign(signer, "image/jpeg", io.BytesIO(jpeg()), out)
    return out.getvalue(), root


def one_pixel_changed(data: bytes) -> bytes:
    """The same file with one byte of its entropy-coded scan flipped: its pixels change, nothing else."""
    bad = bytearray(data)
    bad[data.rfind(b"\xff\xda") + 40] ^= 0x01
    return bytes(bad)


def test_a_signed_c2pa_manifest_validates_and_one_changed_pixel_breaks_it():
    signed = c2pa_jpeg()
    p = read_provenance(signed)
    assert (p.claim, p.source, p.kind, p.c2pa_valid) == ("Test Image Generator", "c2pa", "generator", True)
    assert p.error == "" and "trainedAlgorithmicMedia" in p.detail and "not on a trust list" in p.detail
    q = read_provenance(one_pixel_changed(signed))
    assert (q.source, q.c2pa_valid) == ("c2pa", False)
    assert "signature does not validate" in q.error and "dataHash.mismatch" in q.error


def test_a_trust_list_names_its_signers_trusted_and_no_other(tmp_path, monkeypatch):
    from leakstore.errors import InputError
    from leakstore.featurize.provenance import C2PA_TRUST_ENV, c2pa_trust_anchors

    signed, root = c2pa_signed()
    other = c2pa_signed()[1]  # another throwaway root
    (tmp_path / "mine.pem").write_bytes(other + root)
    (tmp_path / "other.pem").write_bytes(other)
    monkeypatch.setenv(C2PA_TRUST_ENV, str(tmp_path / "mine.pem"))
    p = read_provenance(signed)
    assert p.c2pa_valid is True and "signer trusted" in p.detail and "not on a trust list" not in p.detail
    monkeypatch.setenv(C2PA_TRUST_ENV, str(tmp_path / "other.pem"))
    p = read_provenance(signed)
    assert p.c2pa_valid is True and "not on a trust list" in p.detail  # valid, but not under that root
    q = read_provenance(one_pixel_changed(signed))  # a trusted signer does not mend changed pixels
    assert q.c2pa_valid is False and "dataHash.mismatch" in q.error
    (tmp_path / "notes.txt").write_text("not a certificate")
    for bad in (tmp_path / "notes.txt", tmp_path / "missing.pem"):
        with pytest.raises(InputError, match=f"--c2pa-trust {bad}"):
            c2pa_trust_anchors(bad)


def test_without_the_c2pa_extra_the_column_says_why_it_is_empty(monkeypatch):
    signed = c2pa_jpeg()
    import builtins

    real = builtins.__import__

    def no_c2pa(name, *a, **k):
        if name == "c2pa":
            raise ImportError("no c2pa")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_c2pa)
    p = read_provenance(signed)
    assert p.c2pa_valid is None and "install leakstore[c2pa]" in p.error and p.source == ""
    assert read_provenance(camera_jpeg()).source == "exif"  # every other source still reads


# ---------------------------------------------------------------------------- in every score output
@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """A tiny model, and one file of each kind the issue lists, beside it."""
    from leakstore.config import RunOptions
    from leakstore.featurize.api import featurize
    from leakstore.model.config import ModelConfig
    from leakstore.model.train import train
    from tests.conftest import write_class_images

    d = tmp_path_factory.mktemp("prov")
    data = write_class_images(d / "d", {"real": 10, "gen-a": 10, "gen-b": 10}, size=(80, 72))
    kw = dict(residual_bins=0, period=0, spectrum_bins=0, noise_bins=0, resolution=32, timesteps=(0, 100), fft_size=2)
    featurize(data, d / "s.zarr", vae="demo", opts=RunOptions(device="cpu", progress=False), **kw)
    train(d / "s.zarr", d / "run", ModelConfig(width=8, embed_dim=16, epochs=1, members=1), progress=False)
    files = {
        "a1111.png": a1111_png(),
        "iptc.jpg": xmp_jpeg(IPTC_AI),
        "camera.jpg": camera_jpeg(),
        "stripped.jpg": jpeg(),
        "garbage-xmp.jpg": with_app1(jpeg(), b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta>\x00\xff garbage"),
    }
    try:
        files["c2pa.jpg"], root = c2pa_signed()
        files["c2pa-pixel.jpg"] = one_pixel_changed(files["c2pa.jpg"])
        (d / "roots.pem").write_bytes(root)  # the analyst's trust list: the root that signed c2pa.jpg
    except pytest.skip.Exception:
        pass
    img = d / "images"
    img.mkdir()
    for n, b in files.items():
        (img / n).write_bytes(b)
    return d, img, sorted(files)


def test_every_score_output_carries_the_provenance_columns_and_every_row_is_scored(fixtures):
    from leakstore import Attributor
    from leakstore.api.predictor import PROVENANCE_COLUMNS

    d, img, names = fixtures
    a = Attributor.load(d / "run", "cpu")
    df = a.score_many(sorted(img.iterdir()))
    assert list(df.columns[: len(df.columns)]) and set(PROVENANCE_COLUMNS) <= set(df.columns)
    assert (df.status == "ok").all(), df[["path", "error"]]
    by = {p.rsplit("/", 1)[-1]: r for p, r in zip(df.path, df.to_dict("records"))}
    assert (by["a1111.png"]["meta_source"], by["a1111.png"]["meta_claim"]) == ("png-text", "AUTOMATIC1111 web UI")
    assert by["iptc.jpg"]["meta_source"] == "iptc" and by["camera.jpg"]["meta_claim"] == "camera:Canon EOS 5D Mark IV"
    s = by["stripped.jpg"]
    assert (s["meta_claim"], s["meta_source"], s["meta_error"]) == ("", "", "")
    assert pd.isna(s["c2pa_valid"]) and pd.isna(s["meta_agrees"])
    assert by["garbage-xmp.jpg"]["meta_error"].startswith("iptc: ")
    cam = by["camera.jpg"]  # a camera claim agrees exactly when the signal says real
    assert bool(cam["meta_agrees"]) == (cam["pred"] == "real")
    if "c2pa.jpg" in by:
        assert by["c2pa.jpg"]["c2pa_valid"] is True or by["c2pa.jpg"]["c2pa_valid"] == True  # noqa: E712
        assert by["c2pa-pixel.jpg"]["c2pa_valid"] == False  # noqa: E712
    one = a.score(img / "camera.jpg")
    assert one["meta_claim"] == "camera:Canon EOS 5D Mark IV"


def test_the_cli_scores_writes_the_report_with_conflicts_first_and_explains_one_file(fixtures, tmp_path):
    from typer.testing import CliRunner

    from leakstore.cli import app

    d, img, names = fixtures
    out = tmp_path / "p.parquet"
    r = CliRunner().invoke(app, ["score", str(d / "run"), str(img), "--out", str(out), "--cluster", "1"])
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out)
    assert len(df) == len(names) and (df.status == "ok").all()
    assert "metadata claims:" in r.output and "report:" in r.output
    page = out.with_suffix(".html").read_text()
    assert "Provenance" in page and "Conflicts (" in page and "png-text" in page
    bad = df[(df.meta_agrees == False) | (df.c2pa_valid == False)]  # noqa: E712
    for p in bad.path:  # every conflict is listed by its file name
        assert p in page
    r = CliRunner().invoke(app, ["explain", str(img / "camera.jpg"), str(d / "run"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "metadata claim: camera:Canon EOS 5D Mark IV (exif, camera)" in r.output and "signal:" in r.output
    r = CliRunner().invoke(app, ["explain", str(img / "a1111.png"), str(d / "run"), "--device", "cpu", "--json"])
    e = json.loads(r.output)
    assert e["provenance"]["source"] == "png-text" and e["crops"] and e["verdict"]["status"] == "ok"


def test_the_cli_takes_a_trust_list_and_refuses_a_file_that_is_not_one(fixtures, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from leakstore.cli import app
    from leakstore.featurize.provenance import C2PA_TRUST_ENV

    d, img, names = fixtures
    if "c2pa.jpg" not in names:
        pytest.skip("the c2pa extra is not installed")
    monkeypatch.setenv(C2PA_TRUST_ENV, "")  # restored after the test: the CLI sets it for its workers
    explain = ["explain", str(img / "c2pa.jpg"), str(d / "run"), "--device", "cpu"]
    r = CliRunner().invoke(app, explain)
    assert r.exit_code == 0 and "signer not on a trust list" in r.output, r.output
    r = CliRunner().invoke(app, explain + ["--c2pa-trust", str(d / "roots.pem")])
    assert r.exit_code == 0 and "signer trusted" in r.output, r.output
    out = tmp_path / "p.parquet"
    score = ["score", str(d / "run"), str(img), "--out", str(out), "--cluster", "1", "--no-report"]
    r = CliRunner().invoke(app, score + ["--c2pa-trust", str(d / "roots.pem")])  # read by a dask worker
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out).set_index("path")
    assert "signer trusted" in df.loc[str(img / "c2pa.jpg"), "meta_detail"]
    r = CliRunner().invoke(app, score + ["--c2pa-trust", str(img / "camera.jpg")])
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0, r.output
    assert f"--c2pa-trust {img / 'camera.jpg'}: no certificate in it" in r.output
