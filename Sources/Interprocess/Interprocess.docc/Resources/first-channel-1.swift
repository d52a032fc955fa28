import Interprocess

// Listens, accepts one connection, and sends on it.
let listener = try IPC.listen(on: "unix:/tmp/greeter.sock", sending: .utf8)
let tx = try await listener.accept().sender
try await tx.send("Hello from process 1!")
try await tx.closeAndWait()
