# Counts, in a PNG screenshot, the pixels of each colour given as RRGGBB (exactly, or within 3 per channel with a
# "~" prefix), and the pixels that are not white. Prints "RRGGBB count" lines and "nonwhite count". Standard
# library only: 8-bit RGB or RGBA, not interlaced (what Chromium writes).
import struct, sys, zlib

def pixels(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0, "unsupported PNG"
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    previous = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride): line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, previous))
        elif f == 3:
            for i in range(stride): line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + previous[i]) // 2) & 255
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0; b = previous[i]; c = previous[i - bpp] if i >= bpp else 0
                p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        yield line, bpp
        previous = line

wanted = sys.argv[2:]
counts = {w: 0 for w in wanted}
nonwhite = 0
targets = [(w, w.startswith("~"), tuple(bytes.fromhex(w.lstrip("~")))) for w in wanted]
for line, bpp in pixels(sys.argv[1]):
    for x in range(0, len(line), bpp):
        px = (line[x], line[x + 1], line[x + 2])
        if px == (255, 255, 255): continue
        nonwhite += 1
        for name, near, rgb in targets:
            if px == rgb or (near and all(abs(a - b) <= 3 for a, b in zip(px, rgb))): counts[name] += 1
for w in wanted: print(w, counts[w])
print("nonwhite", nonwhite)
