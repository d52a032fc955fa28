import Interprocess

let frames = try await IPC.connect(to: "shm:frames", receiving: .raw)
var count = 0
while let sum = try await frames.receive({ bytes in bytes.reduce(0) { $0 &+ Int($1) } }) {
    count += 1
    print("frame \(count): checksum \(sum)")
}
