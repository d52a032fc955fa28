import Interprocess

struct Header { var width: UInt32; var height: UInt32 }

let frames = try await IPC.connect(to: "shm:frames", receiving: .raw)
while let header = try await frames.receive({ bytes -> Header? in
    // Copy the header out of the ring first, then check it: the peer cannot change a copy.
    guard bytes.count >= 8 else { return nil }
    let header = Header(width: bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self),
                        height: bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
    return header.width <= 8192 && header.height <= 8192 ? header : nil
}) {
    print(header.map { "\($0.width) x \($0.height)" } ?? "a frame with a bad header")
}
