import Interprocess

let frameSize = 4 << 20
var options = ChannelOptions()
options.sharedMemoryRingSize = 8 << 20
let listener = try IPC.listen(on: "shm:frames", sending: .raw, options: options)
let frames = try await listener.accept().sender
for index in 0..<100 {
    try await frames.send(byteCount: frameSize) { buffer in
        // Write every byte you mean to send: the ring holds what an earlier message left there.
        buffer.initializeMemory(as: UInt8.self, repeating: UInt8(truncatingIfNeeded: index))
    }
}
try await frames.closeAndWait()
