"""Write the bad-input corpus: small files (a few KB) that every reader must refuse with one XRDError line.

Usage: ``python tests/fuzz_corpus/make_corpus.py [FOLDER]`` (default: this script's folder). Every byte
comes from fixed seeds, so the files are the same on every run with the same numpy / h5py versions.
Each case is named after what is wrong with it; ``KNOWN_READER_BUGS`` lists those the readers do not
refuse cleanly yet (see tests/test_fuzz_readers.py).
"""

from __future__ import annotations

import io
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
CBF_STARTER = b"\x0c\x1a\x04\xd5"

# file name -> why the readers do not refuse it cleanly (the reader change that would fix it)
KNOWN_READER_BUGS: dict[str, str] = {}  # every corpus case is refused cleanly now


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _npy_bytes(a: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=allow_pickle)
    return buf.getvalue()


def _tiff(pages: list[tuple[int, int, bytes]], description: str | None = None) -> bytes:
    """A little-endian uint16 TIFF, one strip per page, hand-written (no software tag, same bytes everywhere).

    ``pages``: (width, height, strip bytes); ``description`` goes into the first page's ImageDescription.
    """
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for k, (width, height, data) in enumerate(pages):
        desc = (description.encode() + b"\0") if (description and k == 0) else b""
        entries = [  # tag, type (2 ascii, 3 short, 4 long), count, value
            (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, max(1, height)), (279, 4, 1, len(data)),
        ]
        if desc:
            entries.insert(5, (270, 2, len(desc), 0))
        ifd_at = len(out)
        data_at = ifd_at + 2 + 12 * len(entries) + 4
        desc_at = data_at + len(data)
        next_ifd = desc_at + len(desc) if k < len(pages) - 1 else 0
        out += struct.pack("<H", len(entries))
        for tag, typ, count, value in entries:
            value = {273: data_at, 270: desc_at}.get(tag, value)
            packed = struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
            out += struct.pack("<HHI", tag, typ, count) + packed
        out += struct.pack("<I", next_ifd) + data + desc
    return bytes(out)


def _cbf(frame: np.ndarray, starter: bytes = CBF_STARTER) -> bytes:
    """A CBF with a byte-offset compressed int32 frame (deltas that fit in one byte)."""
    flat = frame.astype(np.int64).ravel()
    deltas = np.diff(np.concatenate([[0], flat]))
    assert np.all(np.abs(deltas) < 128)
    payload = deltas.astype(np.int8).tobytes()
    h, w = frame.shape
    head = (
        "###CBF: VERSION 1.5\r\n"
        "data_corpus\r\n"
        "_array_data.data\r\n"
        ";\r\n"
        "--CIF-BINARY-FORMAT-SECTION--\r\n"
        "Content-Type: application/octet-stream;\r\n"
        '     conversions="x-CBF_BYTE_OFFSET"\r\n'
        "Content-Transfer-Encoding: BINARY\r\n"
        f"X-Binary-Size: {len(payload)}\r\n"
        "X-Binary-ID: 1\r\n"
        'X-Binary-Element-Type: "signed 32-bit integer"\r\n'
        "X-Binary-Element-Byte-Order: LITTLE_ENDIAN\r\n"
        f"X-Binary-Number-of-Elements: {h * w}\r\n"
        f"X-Binary-Size-Fastest-Dimension: {w}\r\n"
        f"X-Binary-Size-Second-Dimension: {h}\r\n"
        "X-Binary-Size-Padding: 1\r\n"
        "\r\n"
    ).encode()
    tail = b"\r\n--CIF-BINARY-FORMAT-SECTION----\r\n;\r\n"
    return head + starter + payload + tail


def _edf(header: str, data: bytes) -> bytes:
    text = "{\n" + header + "}\n"
    pad = (-len(text)) % 512
    return (text[:-2] + " " * pad + "}\n").encode() + data


def _h5(path: Path, build) -> None:
    import h5py

    with h5py.File(path, "w", libver="earliest", track_order=False) as f:
        build(f)


def make(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    counts = _rng(1).poisson(3.0, size=(3, 24, 24)).astype(np.uint16)

    # --- HDF5
    files["hdf5_signature_then_garbage.h5"] = HDF5_MAGIC + _rng(2).bytes(1024)
    h5_files = {
        "hdf5_truncated_half.h5": lambda f: f.create_dataset("entry/data/data", data=counts, chunks=(1, 24, 24)),
        "hdf5_strings_dataset.h5": lambda f: f.create_dataset("entry/data/data", data=np.array([b"ab", b"cd"] * 8)),
        "hdf5_complex_frames.h5": lambda f: f.create_dataset("entry/data/data", data=counts[:1].astype(np.complex64)),
        "hdf5_scalar_dataset.h5": lambda f: f.create_dataset("entry/data/data", data=7),
        "hdf5_groups_only.h5": lambda f: f.create_group("entry/instrument/detector"),
        "hdf5_all_nan_frames.h5": lambda f: f.create_dataset("entry/data/data", data=np.full((2, 16, 16), np.nan, np.float32)),
        "hdf5_1x1_frames.h5": lambda f: f.create_dataset("entry/data/data", data=np.ones((5, 1, 1), np.uint16)),
    }
    for name, build in h5_files.items():
        p = folder / name
        p.unlink(missing_ok=True)
        _h5(p, build)
        files[name] = p.read_bytes()
        p.unlink()
    files["hdf5_truncated_half.h5"] = files["hdf5_truncated_half.h5"][: len(files["hdf5_truncated_half.h5"]) // 2]

    # --- TIFF
    files["tiff_le_signature_then_garbage.tif"] = b"II*\x00" + _rng(3).bytes(700)
    files["tiff_be_signature_then_garbage.tiff"] = b"MM\x00*" + _rng(4).bytes(700)
    frame = counts[0].tobytes()
    files["tiff_zero_width.tif"] = _tiff([(0, 24, frame)])
    files["tiff_strip_past_end.tif"] = _tiff([(24, 24, frame[:200])])
    files["tiff_shaped_zero_height_page.tif"] = _tiff([(24, 0, frame), (24, 24, frame), (24, 24, frame)],
                                                      '{"shape": [3, 24, 24]}')

    # --- EDF
    files["edf_header_unterminated.edf"] = b"{\nHeaderID = EH:000001:000000:000000 ;\nDim_1 = 24 ;\nDim_2 = 24 ;\n"
    files["edf_data_shorter_than_header_says.edf"] = _edf(
        "HeaderID = EH:000001:000000:000000 ;\nImage = 1 ;\nByteOrder = LowByteFirst ;\nDataType = UnsignedShort ;\n"
        "Dim_1 = 64 ;\nDim_2 = 64 ;\nSize = 8192 ;\n", counts[0].tobytes()[:100])

    # --- numpy
    good_npy = _npy_bytes(counts)
    files["npy_truncated_in_data.npy"] = good_npy[: len(good_npy) - 1000]
    files["npy_bad_header.npy"] = b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + b"{'descr': '<u2', 'fortran_order': False, 'shape': (3, 24, 24" + b" " * 56 + b"\n"
    files["npy_object_array.npy"] = _npy_bytes(np.array([{"a": 1}, None, "x"], dtype=object), allow_pickle=True)
    files["npy_complex_frames.npy"] = _npy_bytes(counts[:1].astype(np.complex64))
    files["npy_unicode_strings.npy"] = _npy_bytes(np.array([["abcd"] * 20] * 20))
    files["npy_zero_d.npy"] = _npy_bytes(np.array(5, dtype=np.uint16))
    files["npy_1x1_frames.npy"] = _npy_bytes(np.ones((4, 1, 1), np.uint16))
    files["npy_all_nan_frames.npy"] = _npy_bytes(np.full((2, 24, 24), np.nan, np.float32))
    files["npy_datetime_frames.npy"] = _npy_bytes(np.zeros((2, 20, 20), dtype="datetime64[s]"))

    # --- CBF
    files["cbf_signature_then_garbage.cbf"] = b"###CBF: VERSION 1.5\r\n" + _rng(5).bytes(600)
    files["cbf_no_binary_starter.cbf"] = _cbf(counts[0].astype(np.int32), starter=b"\x0c\x1a\x04\x00")

    # --- archives, Merlin, text
    files["zip_signature_then_garbage.zip"] = b"PK\x03\x04" + _rng(6).bytes(500)
    files["npz_signature_then_garbage.npz"] = b"PK\x03\x04" + _rng(7).bytes(500)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo("notes.txt", date_time=(2020, 1, 1, 0, 0, 0)), "no detector data here\n")
    files["zip_without_detector_data.zip"] = buf.getvalue()
    files["mib_header_only.mib"] = b"MQ1,000001,00384,01,0256,0256,U16,   1x1,01,2020-01-01 00:00:00," + b" " * 300
    files["csv_words.csv"] = b"channel,counts\nalpha,beta\ngamma,delta\n"

    written = []
    for name, data in sorted(files.items()):
        p = folder / name
        p.write_bytes(data)
        written.append(p)
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    for p in make(out):
        print(f"{p.stat().st_size:6d}  {p.name}")
