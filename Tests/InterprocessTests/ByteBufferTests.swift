import Interprocess
import InterprocessNIO
import NIOCore
import Testing

@Suite("ByteBuffer messages", .timeLimit(.minutes(2)))
struct ByteBufferTests {
    @Test("ByteBuffer on one side and [UInt8] on the other, both ways, small and large", arguments: [TransportKind.unix, .sharedMemory])
    func interoperatesWithRawBytes(_ kind: TransportKind) async throws {
        let listener = try IPC.listen(on: kind.endpoint(in: temporaryDirectory()), sending: .byteBuffer, receiving: .byteBuffer)
        defer { listener.close() }
        let helper = try ChildProcess.helper("echo", listener.endpoint)
        let connection = try await within(20) { try await listener.accept() }
        let sizes = [0, 1, 64, 70_000, 2 << 20]
        let producer = Task {
            for (i, size) in sizes.enumerated() {
                var buffer = ByteBufferAllocator().buffer(capacity: size)
                buffer.writeRepeatingByte(UInt8(i + 1), count: size)
                try await connection.sender.send(buffer)
            }
            try await connection.sender.close()
        }
        let echoed = try await within(30) {
            var echoed: [ByteBuffer] = []
            while let b = try await connection.receiver.receive() { echoed.append(b) }
            return echoed
        }
        try await producer.value
        #expect(echoed.count == sizes.count)
        for (i, b) in echoed.enumerated() where i < sizes.count {
            #expect(b.readableBytes == sizes[i])
            #expect(b.readableBytesView.allSatisfy { $0 == UInt8(i + 1) })
        }
        let (status, output) = await helper.finish()
        #expect(status == 0, "helper said: \(output)")
    }
}
