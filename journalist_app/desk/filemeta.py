"""Embedded metadata that could identify a source, read from a decrypted file in memory.

Photos: EXIF in JPEG (APP1), PNG (eXIf and text chunks), TIFF and WebP, including GPS position,
device make, model and serial numbers, owner names, times, software and embedded thumbnails
(which may show a picture before it was cropped); XMP packets and JPEG comments. Documents: PDF
info dictionary and XMP, and the properties of Office/OpenDocument files.

Pure standard library, written for hostile input: every offset is bounds-checked, every loop is
bounded, compressed text is inflated to a fixed limit, and a parse error only ends that part of
the report. Nothing is written to disk.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

HIGH, MEDIUM, LOW = "high", "medium", "low"
MAX_ENTRIES = 512
MAX_VALUE = 4096
MAX_TEXT = 64 * 1024

IFD0_TAGS = {
    0x010E: ("ImageDescription", MEDIUM), 0x010F: ("Make", MEDIUM), 0x0110: ("Model", MEDIUM),
    0x0131: ("Software", MEDIUM), 0x0132: ("DateTime", MEDIUM), 0x013B: ("Artist", HIGH),
    0x8298: ("Copyright", HIGH), 0x9C9B: ("XPTitle", MEDIUM), 0x9C9C: ("XPComment", MEDIUM),
    0x9C9D: ("XPAuthor", HIGH), 0x9C9E: ("XPKeywords", MEDIUM), 0x9C9F: ("XPSubject", MEDIUM),
    0xC62F: ("CameraSerialNumber", HIGH), 0xA431: ("BodySerialNumber", HIGH),
}
EXIF_TAGS = {
    0x9003: ("DateTimeOriginal", MEDIUM), 0x9004: ("DateTimeDigitized", MEDIUM),
    0x9010: ("OffsetTime", LOW), 0x9011: ("OffsetTimeOriginal", MEDIUM),
    0x9286: ("UserComment", MEDIUM), 0xA420: ("ImageUniqueID", HIGH),
    0xA430: ("CameraOwnerName", HIGH), 0xA431: ("BodySerialNumber", HIGH),
    0xA433: ("LensMake", MEDIUM), 0xA434: ("LensModel", MEDIUM), 0xA435: ("LensSerialNumber", HIGH),
    0x927C: ("MakerNote", MEDIUM),
}
GPS_TAGS = {
    0x01: "GPSLatitudeRef", 0x02: "GPSLatitude", 0x03: "GPSLongitudeRef", 0x04: "GPSLongitude",
    0x05: "GPSAltitudeRef", 0x06: "GPSAltitude", 0x07: "GPSTimeStamp", 0x10: "GPSImgDirectionRef",
    0x11: "GPSImgDirection", 0x12: "GPSMapDatum", 0x1B: "GPSProcessingMethod", 0x1D: "GPSDateStamp",
}
TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
XMP_FIELDS = {
    "tiff:Make": MEDIUM, "tiff:Model": MEDIUM, "exif:GPSLatitude": HIGH, "exif:GPSLongitude": HIGH,
    "exif:GPSAltitude": HIGH, "exif:DateTimeOriginal": MEDIUM, "xmp:CreateDate": MEDIUM,
    "xmp:CreatorTool": MEDIUM, "xmp:ModifyDate": LOW, "dc:creator": HIGH, "dc:rights": HIGH,
    "photoshop:AuthorsPosition": HIGH, "photoshop:City": HIGH, "Iptc4xmpCore:Location": HIGH,
    "aux:SerialNumber": HIGH, "exifEX:BodySerialNumber": HIGH, "exifEX:CameraOwnerName": HIGH,
    "pdf:Producer": LOW, "xmpMM:DocumentID": MEDIUM,
}
PDF_KEYS = {"Author": HIGH, "Creator": MEDIUM, "Producer": LOW, "Title": MEDIUM, "Subject": MEDIUM,
            "Keywords": MEDIUM, "CreationDate": MEDIUM, "ModDate": LOW}
OFFICE_FIELDS = {
    "dc:creator": HIGH, "cp:lastModifiedBy": HIGH, "dc:title": MEDIUM, "dcterms:created": MEDIUM,
    "dcterms:modified": LOW, "Company": HIGH, "Manager": HIGH, "Application": LOW,
    "meta:initial-creator": HIGH, "meta:generator": LOW, "meta:creation-date": MEDIUM,
}


@dataclass(frozen=True)
class MetaField:
    group: str
    name: str
    value: str
    risk: str


@dataclass
class MetadataReport:
    """What a file says about itself. ``position`` is (latitude, longitude) when GPS is set."""

    kind: str
    fields: list[MetaField] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    position: tuple[float, float] | None = None

    def add(self, group: str, name: str, value: str, risk: str) -> None:
        value = value.strip()
        if value:
            self.fields.append(MetaField(group, name, value[:500], risk))

    @property
    def ordered(self) -> list[MetaField]:
        """Most identifying first."""
        rank = {HIGH: 0, MEDIUM: 1, LOW: 2}
        return sorted(self.fields, key=lambda f: rank.get(f.risk, 3))

    @property
    def identifying(self) -> list[MetaField]:
        return [f for f in self.fields if f.risk == HIGH]


class _Bad(Exception):
    pass


def _clean(raw: bytes) -> str:
    text = raw.split(b"\x00", 1)[0]
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        return text.decode("latin-1")


class _Tiff:
    """A bounded reader of one TIFF structure (EXIF is TIFF inside other formats)."""

    def __init__(self, data: bytes) -> None:
        if data[:4] not in (b"II*\x00", b"MM\x00*"):
            raise _Bad("not a TIFF header")
        self.data = data
        self.end = "<" if data[:2] == b"II" else ">"
        self.seen: set[int] = set()

    def u16(self, at: int) -> int:
        if at + 2 > len(self.data):
            raise _Bad("short read")
        return int(struct.unpack_from(self.end + "H", self.data, at)[0])

    def u32(self, at: int) -> int:
        if at + 4 > len(self.data):
            raise _Bad("short read")
        return int(struct.unpack_from(self.end + "I", self.data, at)[0])

    def ifd(self, offset: int) -> tuple[dict[int, tuple[int, int, bytes]], int]:
        """Entries {tag: (type, count, raw value)} of the IFD at ``offset``, and the next one."""
        if offset in self.seen or not 8 <= offset < len(self.data):
            raise _Bad("bad IFD offset")
        self.seen.add(offset)
        count = self.u16(offset)
        if count > MAX_ENTRIES:
            raise _Bad("too many IFD entries")
        entries: dict[int, tuple[int, int, bytes]] = {}
        for i in range(count):
            at = offset + 2 + 12 * i
            tag, typ, n = self.u16(at), self.u16(at + 2), self.u32(at + 4)
            size = TYPE_SIZES.get(typ, 0) * n
            if size == 0:
                continue
            start = at + 8 if size <= 4 else self.u32(at + 8)
            if size > MAX_VALUE or start + size > len(self.data):
                entries[tag] = (typ, n, b"")
                continue
            entries[tag] = (typ, n, self.data[start:start + size])
        next_at = offset + 2 + 12 * count
        return entries, (self.u32(next_at) if next_at + 4 <= len(self.data) else 0)

    def numbers(self, typ: int, n: int, raw: bytes) -> list[float]:
        fmt = {3: "H", 4: "I", 8: "h", 9: "i", 1: "B", 6: "b", 11: "f", 12: "d"}
        n = min(n, len(raw) // TYPE_SIZES.get(typ, 1))  # never trust the count over the bytes
        if typ in (5, 10):
            pairs = struct.unpack(self.end + ("II" if typ == 5 else "ii") * n, raw[: 8 * n])
            return [a / b if b else 0.0 for a, b in zip(pairs[::2], pairs[1::2], strict=True)]
        if typ in fmt and raw:
            return [float(v) for v in struct.unpack(self.end + fmt[typ] * n, raw[: TYPE_SIZES[typ] * n])]
        return []

    def text(self, tag: int, typ: int, n: int, raw: bytes) -> str:
        if tag in (0x9C9B, 0x9C9C, 0x9C9D, 0x9C9E, 0x9C9F):  # XP*: UTF-16LE in BYTE
            return raw.decode("utf-16-le", "replace").split("\x00", 1)[0]
        if tag == 0x9286 and len(raw) >= 8:  # UserComment: 8-byte charset code first
            code, body = raw[:8], raw[8:]
            return body.decode("utf-16", "replace") if code.startswith(b"UNICODE") else _clean(body)
        if tag == 0x927C:
            return f"{len(raw)} bytes of maker-specific data (may hold serial numbers)"
        if typ in (2, 7):
            return _clean(raw)
        values = self.numbers(typ, n, raw)
        return ", ".join(f"{v:g}" for v in values)


def _dms(values: list[float], ref: str) -> float | None:
    if len(values) != 3:
        return None
    degrees = values[0] + values[1] / 60 + values[2] / 3600
    return -degrees if ref.upper().startswith(("S", "W")) else degrees


def read_exif(tiff_bytes: bytes, report: MetadataReport, group: str = "EXIF") -> None:
    """IFD0, the Exif and GPS IFDs, and IFD1 (an embedded thumbnail)."""
    tiff = _Tiff(tiff_bytes)
    ifd0, next_ifd = tiff.ifd(tiff.u32(4))
    for tag, (name, risk) in IFD0_TAGS.items():
        if tag in ifd0:
            typ, n, raw = ifd0[tag]
            report.add(group, name, tiff.text(tag, typ, n, raw), risk)
    if 0x8769 in ifd0:
        typ, n, raw = ifd0[0x8769]
        exif, _ = tiff.ifd(int(tiff.numbers(typ, n, raw)[0]))
        for tag, (name, risk) in EXIF_TAGS.items():
            if tag in exif:
                typ, n, raw = exif[tag]
                report.add(group, name, tiff.text(tag, typ, n, raw), risk)
    if 0x8825 in ifd0:
        typ, n, raw = ifd0[0x8825]
        gps, _ = tiff.ifd(int(tiff.numbers(typ, n, raw)[0]))
        values = {GPS_TAGS[t]: gps[t] for t in gps if t in GPS_TAGS}
        for name, (typ, n, raw) in values.items():
            report.add("GPS", name, tiff.text(0, typ, n, raw), HIGH)
        lat = lon = None
        if "GPSLatitude" in values and "GPSLongitude" in values:
            lat = _dms(tiff.numbers(*values["GPSLatitude"]), _clean(values.get("GPSLatitudeRef", (2, 1, b"N"))[2]))
            lon = _dms(tiff.numbers(*values["GPSLongitude"]), _clean(values.get("GPSLongitudeRef", (2, 1, b"E"))[2]))
        if lat is not None and lon is not None and (lat, lon) != (0.0, 0.0):
            report.position = (round(lat, 6), round(lon, 6))
            report.add("GPS", "Position", f"{lat:.6f}, {lon:.6f}", HIGH)
    if next_ifd:
        ifd1, _ = tiff.ifd(next_ifd)
        if 0x0201 in ifd1 or 0x0111 in ifd1:
            length = ifd1.get(0x0202)
            size = int(tiff.numbers(*length)[0]) if length else 0
            report.add(group, "Thumbnail", f"embedded preview image ({size} bytes): may show the "
                       "picture before it was cropped or edited", HIGH)


def read_xmp(packet: bytes, report: MetadataReport) -> None:
    text = packet[:MAX_TEXT].decode("utf-8", "replace")
    report.notes.append(f"XMP packet of {len(packet)} bytes")
    for name, risk in XMP_FIELDS.items():
        ns = re.escape(name)
        m = re.search(rf'{ns}="([^"]*)"', text) or re.search(
            rf"<{ns}[^>]*>\s*(?:<rdf:\w+>\s*<rdf:li[^>]*>)?([^<]*)<", text)
        if m:
            report.add("XMP", name, m.group(1), risk)


def _jpeg(data: bytes, report: MetadataReport) -> None:
    i = 2
    for _ in range(4096):
        if i + 4 > len(data) or data[i] != 0xFF:
            return
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xDA, 0xD9):  # image data starts: no more metadata segments
            return
        length = int.from_bytes(data[i + 2:i + 4], "big")
        segment = data[i + 4:i + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            _guarded(report, "EXIF", partial(read_exif, segment[6:], report))
        elif marker == 0xE1 and segment.startswith(b"http://ns.adobe.com/xap/1.0/\x00"):
            read_xmp(segment[29:], report)
        elif marker == 0xED and segment.startswith(b"Photoshop 3.0"):
            report.add("IPTC", "Photoshop/IPTC block", f"{len(segment)} bytes (may hold names, places, captions)", MEDIUM)
        elif marker == 0xFE:
            report.add("JPEG", "Comment", _clean(segment), MEDIUM)
        i += 2 + length


def _inflate(raw: bytes) -> bytes:
    return zlib.decompressobj().decompress(raw, MAX_TEXT)


def _png(data: bytes, report: MetadataReport) -> None:
    i = 8
    for _ in range(100_000):
        if i + 8 > len(data):
            return
        length = int.from_bytes(data[i:i + 4], "big")
        kind = data[i + 4:i + 8]
        body = data[i + 8:i + 8 + length]
        if kind == b"eXIf":
            _guarded(report, "EXIF", partial(read_exif, body, report))
        elif kind in (b"tEXt", b"zTXt", b"iTXt"):
            key, _, rest = body.partition(b"\x00")
            if kind == b"zTXt":
                rest = _inflate(rest[1:])
            elif kind == b"iTXt":
                flag, rest = rest[:1], rest[2:]
                _lang, _, rest = rest.partition(b"\x00")
                _tkey, _, rest = rest.partition(b"\x00")
                rest = _inflate(rest) if flag == b"\x01" else rest
            name = key.decode("latin-1")[:80]
            if name == "XML:com.adobe.xmp":
                read_xmp(rest, report)
            else:
                risk = HIGH if name.lower() in ("author", "copyright", "source") else MEDIUM
                report.add("PNG text", name, rest[:MAX_VALUE].decode("utf-8", "replace"), risk)
        elif kind == b"tIME" and len(body) == 7:
            y, mo, d, h, mi, s = struct.unpack(">HBBBBB", body)
            report.add("PNG", "Last modified", f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}", MEDIUM)
        elif kind == b"IEND":
            return
        i += 12 + length


def _webp(data: bytes, report: MetadataReport) -> None:
    i = 12
    for _ in range(10_000):
        if i + 8 > len(data):
            return
        kind, length = data[i:i + 4], int.from_bytes(data[i + 4:i + 8], "little")
        body = data[i + 8:i + 8 + length]
        if kind == b"EXIF":
            _guarded(report, "EXIF", partial(read_exif, body[6:] if body.startswith(b"Exif") else body, report))
        elif kind == b"XMP ":
            read_xmp(body, report)
        i += 8 + length + (length & 1)


def _pdf_string(raw: str) -> str:
    if raw.startswith("<"):
        try:
            data = bytes.fromhex(re.sub(r"\s", "", raw[1:-1]))
        except ValueError:
            return raw
        return data.decode("utf-16", "replace") if data.startswith(b"\xfe\xff") else data.decode("latin-1")
    return re.sub(r"\\(.)", r"\1", raw[1:-1])


def _pdf(data: bytes, report: MetadataReport) -> None:
    window = data[: 1024 * 1024] + data[-1024 * 1024:]
    text = window.decode("latin-1")
    for key, risk in PDF_KEYS.items():
        m = re.search(rf"/{key}\s*(\((?:\\.|[^\\)]){{0,2000}}\)|<[0-9A-Fa-f\s]{{0,4000}}>)", text)
        if m:
            report.add("PDF", key, _pdf_string(m.group(1)), risk)
    start = window.find(b"<x:xmpmeta")
    if start != -1:
        stop = window.find(b"</x:xmpmeta>", start)
        read_xmp(window[start:stop if stop != -1 else start + MAX_TEXT], report)


def _zip(data: bytes, report: MetadataReport) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = set(archive.namelist())
        for member in ("docProps/core.xml", "docProps/app.xml", "meta.xml"):
            if member not in names or archive.getinfo(member).file_size > MAX_TEXT * 4:
                continue
            xml = archive.read(member).decode("utf-8", "replace")
            for name, risk in OFFICE_FIELDS.items():
                m = re.search(rf"<{re.escape(name)}(?:\s[^>]*)?>([^<]*)<", xml)
                if m:
                    report.add("Document properties", name, m.group(1), risk)
        if not report.fields:
            report.notes.append("a ZIP archive; no Office or OpenDocument properties found")


def _guarded(report: MetadataReport, what: str, parse: Callable[[], None]) -> None:
    try:
        parse()
    except (_Bad, struct.error, IndexError, ValueError, zlib.error, zipfile.BadZipFile) as exc:
        report.notes.append(f"{what}: damaged or unusual structure, not fully read ({exc})")


def _tiff(data: bytes, report: MetadataReport) -> None:
    read_exif(data, report)


FORMATS: tuple[tuple[bytes, str, Callable[[bytes, MetadataReport], None]], ...] = (
    (b"\xff\xd8\xff", "JPEG image", _jpeg),
    (b"\x89PNG\r\n\x1a\n", "PNG image", _png),
    (b"II*\x00", "TIFF image", _tiff),
    (b"MM\x00*", "TIFF image", _tiff),
    (b"%PDF-", "PDF document", _pdf),
    (b"PK\x03\x04", "ZIP-based document", _zip),
)


def inspect(data: bytes, *, truncated: bool = False) -> MetadataReport:
    """Read what ``data`` (a file's plaintext, or its beginning) says about who made it."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        report = MetadataReport("WebP image")
        _guarded(report, "WebP", partial(_webp, data, report))
    else:
        for magic, kind, parser in FORMATS:
            if data.startswith(magic):
                report = MetadataReport(kind)
                _guarded(report, kind, partial(parser, data, report))
                break
        else:
            report = MetadataReport("unknown")
            report.notes.append("no reader for this type of file: its metadata was not inspected")
    if truncated:
        report.notes.append("only the beginning of this large file was inspected")
    return report
