import Interprocess

// Dials the greeter and prints what arrives until the channel is closed.
let rx = try await IPC.connect(to: "unix:/tmp/greeter.sock", receiving: .utf8)
for try await message in rx {
    print(message)
}
