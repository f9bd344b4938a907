#!/usr/bin/env python3
"""Writes a larger test scan by tiling a NIfTI-1 volume: TX x TY copies in-plane, the first Z slices.

    python3 benchmarks/tile-nifti.py IN.nii.gz OUT.nii.gz TX TY Z

Used to time inference and measure its memory on a CT-sized slice from the small TotalSegmentator
example (there is no large CT in ../shared/data). Header and affine are kept; only the dimensions
change. Standard library only, so it runs wherever the benchmark does.
"""

import gzip
import struct
import sys


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    tx, ty, z = (int(a) for a in sys.argv[3:6])
    raw = gzip.open(src).read() if src.endswith(".gz") else open(src, "rb").read()
    if struct.unpack_from("<i", raw, 0)[0] != 348:
        sys.exit(f"{src}: not a little-endian NIfTI-1 file")
    hdr = bytearray(raw[:348])
    dim = list(struct.unpack_from("<8h", hdr, 40))
    bitpix = struct.unpack_from("<h", hdr, 72)[0]
    vox_offset = int(struct.unpack_from("<f", hdr, 108)[0])
    if dim[0] != 3:
        sys.exit(f"{src}: expected a 3D volume, got {dim[0]} dimensions")
    nx, ny, nz = dim[1:4]
    if not 0 < z <= nz:
        sys.exit(f"{src}: has {nz} slices, cannot keep {z}")
    row = nx * bitpix // 8
    data = raw[vox_offset:]
    out = bytearray()
    for k in range(z):
        plane = data[k * ny * row : (k + 1) * ny * row]
        tiled_rows = b"".join(plane[j * row : (j + 1) * row] * tx for j in range(ny))
        out += tiled_rows * ty
    dim[1:4] = [nx * tx, ny * ty, z]
    struct.pack_into("<8h", hdr, 40, *dim)
    with gzip.open(dst, "wb", compresslevel=1) as f:
        f.write(bytes(hdr) + raw[348:vox_offset] + bytes(out))
    print(f"{dst}: {dim[1]} x {dim[2]} x {dim[3]}")


if __name__ == "__main__":
    main()
