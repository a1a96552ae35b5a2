"""What an image's own metadata says made it: C2PA, IPTC/XMP, PNG text chunks, EXIF.

Read from the bytes the loader already holds (featurize.runner.ImageRows), never from the network,
never by running anything the file contains. Every block is untrusted input: sizes are capped, an
XMP packet with a DTD is refused before parsing, a malformed block is recorded in `error` and the
others are still read. The strongest source present names the claim:

    c2pa      a C2PA manifest (its signature validated by the c2pa-python bindings, the optional
              extra `leakstore[c2pa]`): the claim generator and the digitalSourceType of its actions
    iptc      the IPTC DigitalSourceType in an XMP packet (trainedAlgorithmicMedia, ...), and the
              packet's CreatorTool
    png-text  the text chunks of local generation tools: AUTOMATIC1111's `parameters`, ComfyUI's
              `prompt`/`workflow`, NovelAI's `Software`/`Comment`, InvokeAI's metadata
    exif      Make/Model (a camera) or Software (an editor, or a generator that writes its name)

A claim of what made the image (a generator, a camera) outranks a mere tool name from a stronger
source (an XMP CreatorTool "Lightroom" beside an EXIF camera: the camera is the claim).

Only a valid C2PA manifest binds its claim to a signer; every other source is written by whoever
last saved the file. Metadata is stripped by most re-encodings, so its absence says nothing
(docs/model-card.md)."""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

MAX_BLOCK = 1 << 20  # bytes of one metadata block (XMP packet, PNG text chunk, inflated zTXt) read at most
MAX_CLAIM = 120  # characters of a claim or detail kept per source
IPTC_GENERATED = (
    "trainedAlgorithmicMedia",
    "compositeWithTrainedAlgorithmicMedia",
    "algorithmicMedia",
    "compositeSynthetic",
)
IPTC_CAPTURED = ("digitalCapture", "negativeFilm", "positiveFilm", "print", "minorHumanEdits")
# names generators and their front ends write into Software, CreatorTool or a C2PA claim generator
GENERATOR_NAMES = re.compile(
    r"midjourney|dall[\s\-·.]?e|stable[\s_\-]?diffusion|sdxl|firefly|imagen|gemini|flux|novelai|leonardo|ideogram|"
    r"automatic1111|comfyui|invokeai|fooocus|openai|chatgpt|gpt-4o|bing image creator|designer|runway|kandinsky|"
    r"playground|dreamstudio|nightcafe|craiyon|dalle",
    re.I,
)
C2PA_INSTALL = "install leakstore[c2pa] (the c2pa-python bindings) to validate it"
# a PEM file of the certificates an analyst trusts as C2PA signing roots (score/explain --c2pa-trust set it;
# read in every process that reads metadata, dask workers included)
C2PA_TRUST_ENV = "LEAKSTORE_C2PA_TRUST"


@dataclass(frozen=True)
class Provenance:
    """What one file's metadata claims. `kind`: "generator", "camera", "tool" (an editor) or ""."""

    claim: str = ""
    source: str = ""
    kind: str = ""
    c2pa_valid: bool | None = None
    error: str = ""
    detail: str = ""


NONE = Provenance()


def read_provenance(data: bytes) -> Provenance:
    """The claim of the strongest metadata source in `data` (a whole image file), with what the other
    sources say in `detail` and every malformed block in `error`. Never raises."""
    found: list[tuple[str, str, str, str]] = []  # (source, claim, kind, detail), strongest first
    errors: list[str] = []
    valid = None
    for source, reader in (("c2pa", _c2pa), ("iptc", _xmp), ("png-text", _png_text), ("exif", _exif)):
        try:
            got = reader(data)
        except _Malformed as e:
            errors.append(f"{source}: {e}")
            continue
        except Exception as e:  # a reader's own failure is one block's error, never the row's
            errors.append(f"{source}: unreadable ({type(e).__name__}: {_clip(str(e))})")
            continue
        if got is None:
            continue
        if source == "c2pa":
            claim, kind, detail, valid, why = got
            if why:
                errors.append(f"c2pa: {why}")
            if not claim and not kind:  # a manifest that could not be read: its error says so
                continue
            got = (claim, kind, detail)
        found.append((source, *got))
    if not found:
        return Provenance(c2pa_valid=valid, error="; ".join(errors))
    # a claim about what made the image (generator, camera) outranks a weaker source's tool name: an
    # XMP CreatorTool "Lightroom" beside an EXIF camera leaves the camera the claim
    found.sort(key=lambda f: f[2] not in ("generator", "camera"))
    source, claim, kind, detail = found[0]
    others = [f"{s}: {c or k}" for s, c, k, _ in found[1:] if c or k]
    return Provenance(
        claim=_clip(claim),
        source=source,
        kind=kind,
        c2pa_valid=valid,
        error="; ".join(errors),
        detail="; ".join(x for x in [_clip(detail)] + others if x),
    )


class _Malformed(ValueError):
    """A metadata block that is there but cannot be read as its format says: recorded, never fatal."""


def _clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_CLAIM else text[: MAX_CLAIM - 3] + "..."


def _generator_name(text: str) -> bool:
    return bool(text) and GENERATOR_NAMES.search(text) is not None


# ---------------------------------------------------------------------------- C2PA
_c2pa_contexts: dict = {}  # trust-anchor file ("" for none) -> c2pa.Context


def c2pa_trust_anchors(path) -> str:
    """The PEM text of a file of trusted C2PA signing roots; one line naming the file when it is not one."""
    from leakstore.errors import InputError

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InputError(
            f"--c2pa-trust {path}: cannot read it ({e.strerror or type(e).__name__}): give a PEM file of root "
            "certificates"
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise InputError(
            f"--c2pa-trust {path}: no certificate in it: give the trust anchors as PEM (-----BEGIN CERTIFICATE-----; "
            "a DER file converts with openssl x509 -inform der)"
        )
    return data.decode("ascii", errors="replace")


def _c2pa_context(c2pa):
    """Offline validation (no remote manifests, no certificate status requests); with a trust-anchor file
    in $LEAKSTORE_C2PA_TRUST a signer chaining to one of its roots validates as trusted."""
    trust = os.environ.get(C2PA_TRUST_ENV, "")
    if trust not in _c2pa_contexts:
        settings: dict = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
        if trust:
            settings["verify"]["verify_trust"] = True
            settings["trust"] = {"trust_anchors": c2pa_trust_anchors(trust)}
        _c2pa_contexts[trust] = c2pa.Context(c2pa.Settings.from_dict(settings))
    return _c2pa_contexts[trust]


def _mime(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if data[4:12] in (b"ftypavif", b"ftypheic", b"ftypheix", b"ftypmif1"):
        return "image/avif" if data[8:12] == b"avif" else "image/heic"
    return None


def _c2pa(data: bytes):
    """(claim, kind, detail, valid, why) of the active manifest, or None without one."""
    if b"c2pa" not in data:  # the JUMBF label of every manifest store: no label, no manifest
        return None
    mime = _mime(data)
    if mime is None:
        return None
    try:
        import c2pa
    except ImportError:
        return "", "", "", None, f"a manifest may be present, not validated: {C2PA_INSTALL}"
    import json

    try:
        reader = c2pa.Reader(mime, io.BytesIO(data), context=_c2pa_context(c2pa))
    except c2pa.C2paError as e:
        if type(e).__name__.endswith("ManifestNotFound") or "no JUMBF" in str(e):
            return None
        return "", "", "", False, f"unreadable manifest ({_clip(str(e))})"
    with reader:
        store = json.loads(reader.json())
        state = reader.get_validation_state()
    manifest = store.get("manifests", {}).get(store.get("active_manifest") or "", {})
    info = manifest.get("claim_generator_info") or [{}]
    claim = str(info[0].get("name") or manifest.get("claim_generator") or "")
    types = [
        str(a.get("digitalSourceType", "")).rsplit("/", 1)[-1]
        for assertion in manifest.get("assertions", [])
        if str(assertion.get("label", "")).startswith("c2pa.actions")
        for a in (assertion.get("data") or {}).get("actions", [])
        if a.get("digitalSourceType")
    ]
    if any(t in IPTC_GENERATED for t in types) or _generator_name(claim):
        kind = "generator"
    elif any(t in IPTC_CAPTURED for t in types):
        kind = "camera"
    else:
        kind = "tool"
    codes = [s.get("code", "") for s in store.get("validation_status", []) or []]
    untrusted = "signingCredential.untrusted" in codes
    failures = [c for c in codes if c != "signingCredential.untrusted"]
    valid = state in ("Valid", "Trusted")
    detail = ", ".join(
        x
        for x in (
            f"digitalSourceType {', '.join(types)}" if types else "",
            "signer not on a trust list" if untrusted else ("signer trusted" if state == "Trusted" else ""),
        )
        if x
    )
    why = "" if valid else f"signature does not validate ({', '.join(failures) or state})"
    return claim or "(no claim generator)", kind, detail, valid, why


# ---------------------------------------------------------------------------- XMP / IPTC
_XMP_START, _XMP_END = b"<x:xmpmeta", b"</x:xmpmeta>"


def _xmp(data: bytes):
    """(claim, kind, detail) from the first XMP packet's DigitalSourceType and CreatorTool, or None."""
    start = data.find(_XMP_START)
    if start < 0:
        return None
    end = data.find(_XMP_END, start, start + MAX_BLOCK)
    if end < 0:
        raise _Malformed("truncated XMP packet (no closing x:xmpmeta within 1 MiB)")
    packet = data[start : end + len(_XMP_END)]
    if b"<!DOCTYPE" in packet or b"<!ENTITY" in packet:
        raise _Malformed("XMP packet with a DTD: not parsed")
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(packet)
    except ET.ParseError as e:
        raise _Malformed(f"malformed XMP packet ({e})") from None
    source_type = tool = ""
    for el in root.iter():
        for key, value in el.attrib.items():
            if key.endswith("}DigitalSourceType"):
                source_type = value
            elif key.endswith("}CreatorTool"):
                tool = value
        tag = el.tag.rsplit("}", 1)[-1] if isinstance(el.tag, str) else ""
        if tag == "DigitalSourceType":
            source_type = (el.text or "").strip() or next(
                (v for k, v in el.attrib.items() if k.endswith("}resource")), source_type
            )
        elif tag == "CreatorTool" and (el.text or "").strip():
            tool = el.text.strip()
    term = source_type.rsplit("/", 1)[-1]
    if not term and not tool:
        return None
    if term in IPTC_GENERATED or (not term and _generator_name(tool)):
        kind = "generator"
    elif term in IPTC_CAPTURED:
        kind = "camera"
    else:
        kind = "tool" if tool else ""
    if not term:  # no DigitalSourceType: the packet's tool is a weaker claim, read like EXIF Software
        return tool, kind, "XMP CreatorTool"
    return (tool or term), kind, f"DigitalSourceType {term}"


# ---------------------------------------------------------------------------- PNG text chunks
_PNG = b"\x89PNG\r\n\x1a\n"


def png_text(data: bytes) -> dict[str, str]:
    """{keyword: text} of a PNG's tEXt, zTXt and iTXt chunks (each capped at MAX_BLOCK)."""
    if not data.startswith(_PNG):
        return {}
    out, pos = {}, len(_PNG)
    while pos + 8 <= len(data):
        n, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if ctype == b"IEND" or len(body) < n:
            if len(body) < n:
                raise _Malformed(f"truncated {ctype.decode('latin-1')} chunk")
            break
        if ctype not in (b"tEXt", b"zTXt", b"iTXt") or n > MAX_BLOCK:
            continue
        key, _, rest = body.partition(b"\x00")
        keyword = key.decode("latin-1")
        if ctype == b"tEXt":
            out[keyword] = rest.decode("latin-1")
        elif ctype == b"zTXt":
            out[keyword] = _inflate(rest[1:]).decode("latin-1")
        else:  # iTXt: compression flag, method, language\0, translated keyword\0, text
            flag, rest = rest[:1], rest[2:]
            rest = rest.split(b"\x00", 2)[-1]
            out[keyword] = (_inflate(rest) if flag == b"\x01" else rest).decode("utf-8", "replace")
    return out


def _inflate(raw: bytes) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(raw, MAX_BLOCK)
    except zlib.error as e:
        raise _Malformed(f"compressed text chunk does not inflate ({e})") from None
    return out


_A1111_MODEL = re.compile(r"Model: ([^,\n]+)")


def _png_text(data: bytes):
    """(claim, kind, detail) from the text chunks generation tools write, or None."""
    text = png_text(data)
    if not text:
        return None
    if "parameters" in text:  # AUTOMATIC1111 web UI (and tools that copy its format)
        m = _A1111_MODEL.search(text["parameters"])
        return "AUTOMATIC1111 web UI", "generator", f"model {m.group(1).strip()}" if m else "parameters chunk"
    if "prompt" in text or "workflow" in text:
        return "ComfyUI", "generator", "prompt/workflow chunks"
    if "invokeai_metadata" in text or "sd-metadata" in text or "dream" in text:
        return "InvokeAI", "generator", "invokeai metadata chunk"
    software = text.get("Software", "")
    if "NovelAI" in software or "NovelAI" in text.get("Source", ""):
        return "NovelAI", "generator", _clip(text.get("Source", ""))
    if _generator_name(software):
        return software, "generator", "Software chunk"
    return None


# ---------------------------------------------------------------------------- EXIF
_ASCII_TAGS = {271: "make", 272: "model", 305: "software"}


def exif_block(data: bytes) -> bytes | None:
    """The TIFF structure holding a file's EXIF (JPEG APP1 "Exif", PNG eXIf, WebP EXIF, a TIFF itself), if any."""
    if data[:2] == b"\xff\xd8":  # JPEG: walk the marker segments up to the scan
        pos = 2
        while pos + 4 <= len(data) and data[pos] == 0xFF:
            marker = data[pos + 1]
            if marker in (0xDA, 0xD9):
                break
            n = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
            seg = data[pos + 4 : pos + 2 + n]
            if marker == 0xE1 and seg.startswith(b"Exif\x00\x00"):
                return seg[6:]
            pos += 2 + n
        return None
    if data.startswith(_PNG):
        i = data.find(b"eXIf")
        if i < 4:
            return None
        n = struct.unpack(">I", data[i - 4 : i])[0]
        return data[i + 4 : i + 4 + min(n, MAX_BLOCK)]
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        i = data.find(b"EXIF", 12)
        if i < 0:
            return None
        n = struct.unpack("<I", data[i + 4 : i + 8])[0]
        block = data[i + 8 : i + 8 + min(n, MAX_BLOCK)]
        return block[6:] if block.startswith(b"Exif\x00\x00") else block
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return data
    return None


def exif_fields(tiff: bytes) -> dict[str, str]:
    """Make, Model and Software from IFD0 of a TIFF structure (ASCII tags only; nothing else is read)."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        raise _Malformed("EXIF block without a TIFF header")
    e = "<" if tiff[:2] == b"II" else ">"
    ifd = struct.unpack(e + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        raise _Malformed("EXIF directory outside its block")
    count = struct.unpack(e + "H", tiff[ifd : ifd + 2])[0]
    out = {}
    for k in range(min(count, 512)):
        entry = tiff[ifd + 2 + 12 * k : ifd + 14 + 12 * k]
        if len(entry) < 12:
            raise _Malformed("truncated EXIF directory")
        tag, typ, n = struct.unpack(e + "HHI", entry[:8])
        if tag not in _ASCII_TAGS or typ != 2:
            continue
        if n <= 4:
            raw = entry[8 : 8 + n]
        else:
            off = struct.unpack(e + "I", entry[8:12])[0]
            raw = tiff[off : off + min(n, 4096)]
        out[_ASCII_TAGS[tag]] = raw.split(b"\x00", 1)[0].decode("latin-1").strip()
    return out


def _exif(data: bytes):
    """(claim, kind, detail) from EXIF Make/Model (a camera) or Software, or None."""
    block = exif_block(data)
    if not block:
        return None
    f = exif_fields(block)
    make, model, software = f.get("make", ""), f.get("model", ""), f.get("software", "")
    if make or model:
        name = model if make and model.lower().startswith(make.lower()) else f"{make} {model}".strip()
        return f"camera:{name}", "camera", f"Software {software}" if software else ""
    if software:
        return software, "generator" if _generator_name(software) else "tool", "EXIF Software"
    return None


# ---------------------------------------------------------------------------- claim vs signal
def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower().replace("·", ""))


def named_class(claim: str, class_names) -> str | None:
    """The model class a claim names (its normalised name inside the claim's, or the reverse), if one."""
    c = _norm(claim)
    if len(c) < 4:
        return None
    hits = [n for n in class_names if len(_norm(n)) >= 4 and (_norm(n) in c or c in _norm(n))]
    return hits[0] if len(hits) == 1 else None


def agrees(prov: Provenance, pred: str | None, class_names, real_class: str | None) -> bool | None:
    """Whether the metadata's claim and the signal's verdict `pred` (a class name or "unknown") point
    the same way: camera vs real, generator vs a generator (the same one where the claim names a
    class of the model). None when there is no claim, no verdict, or nothing to compare (an editor;
    a camera claim on a model without a real class)."""
    if not prov.kind or pred is None or prov.kind == "tool":
        return None
    signal_real = real_class is not None and pred == real_class
    if prov.kind == "camera":
        return None if real_class is None else signal_real
    if signal_real:  # a generator's claim on an image the signal calls real
        return False
    named = named_class(prov.claim, [n for n in class_names if n != real_class])
    return pred == named if named is not None else True
