#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Interprocess
import Testing

/// Batch sizes that cross the capacity (16) and the credit quarter (4) in every way: 1, under, at, over.
private let sendSizes = [1, 7, 16, 17, 50, 3, 4, 33, 2, 100]
private let receiveSizes = [1, 64, 5, 16, 17, 2, 200, 3]

@Suite("Batched sends and receives", .timeLimit(.minutes(2)))
struct BatchTests {
    /// `send(contentsOf:)` and `receive(upTo:)` on every kind of channel, batches larger than the capacity
    /// included: every message arrives once, in order; a batch is never empty nor larger than asked; then nil.
    @Test(arguments: ChannelKind.allCases)
    func orderCountAndEnd(_ kind: ChannelKind) async throws {
        let (tx, rx) = try await makeChannel(kind, RawBytesCodec(), capacity: 16)
        let total = 5000
        let producer = Task {
            var i = 0
            var round = 0
            while i < total {
                let n = min(sendSizes[round % sendSizes.count], total - i)
                try await tx.send(contentsOf: (i..<(i + n)).map { numbered(UInt64($0)) })
                i += n
                round += 1
            }
            try await tx.close()
        }
        var received = 0
        var round = 0
        while true {
            let limit = receiveSizes[round % receiveSizes.count]
            round += 1
            guard let batch = try await within(20, { try await rx.receive(upTo: limit) }) else { break }
            #expect(!batch.isEmpty && batch.count <= limit)
            for message in batch {
                #expect(index(message) == UInt64(received))
                received += 1
            }
        }
        #expect(received == total)
        try await within(20) { try await producer.value }
    }

    /// A value too large for the receiver in the middle of a batch: the ones before it are sent, it and the
    /// ones after it are not, the error says why, and the channel goes on.
    @Test(arguments: [ChannelKind.unix, .sharedMemory])
    func aFailureInTheMiddleStopsTheBatchThere(_ kind: ChannelKind) async throws {
        let (tx, rx) = try await makeChannel(kind, RawBytesCodec(), capacity: 16, maxFrameSize: 1024)
        let batch = [numbered(0), numbered(1), [UInt8](repeating: 0, count: 4096), numbered(3)]
        await #expect { try await tx.send(contentsOf: batch) } throws: { ($0 as! IPCError).code == .frameTooLarge }
        try await tx.send(numbered(4))
        try await tx.close()
        var seen: [UInt64] = []
        while let more = try await within(20, { try await rx.receive(upTo: 10) }) { seen += more.map(index) }
        #expect(seen == [0, 1, 4])
    }

    /// Across processes both ways, on every transport: a helper counts (and checks the order of) what batches
    /// sent, and batches receive what the helper sends one by one.
    @Test(arguments: TransportKind.allCases)
    func acrossProcesses(_ kind: TransportKind) async throws {
        let total = 20_000
        let dir = temporaryDirectory()
        do {
            let listener = try IPC.listen(on: kind.endpoint(in: dir), sending: .raw)
            defer { listener.close() }
            let helper = try ChildProcess.helper("count", listener.endpoint, total)
            let tx = try await within(20) { try await listener.accept() }.sender
            var i = 0
            var round = 0
            while i < total {
                let n = min(sendSizes[round % sendSizes.count] * 3, total - i)
                let batch = (i..<(i + n)).map { numbered(UInt64($0)) }
                try await within(20) { try await tx.send(contentsOf: batch) }
                i += n
                round += 1
            }
            try await tx.closeAndWait()
            let (status, output) = await helper.finish()
            #expect(status == 0, "helper said: \(output)")
            #expect(output.contains("received \(total)"))
        }
        let listener = try IPC.listen(on: kind.endpoint(in: temporaryDirectory()), receiving: .raw)
        defer { listener.close() }
        let helper = try ChildProcess.helper("send", listener.endpoint, total)
        let rx = try await within(20) { try await listener.accept() }.receiver
        var received = 0
        while let batch = try await within(20, { try await rx.receive(upTo: 64) }) {
            #expect(!batch.isEmpty && batch.count <= 64)
            for message in batch {
                #expect(index(message) == UInt64(received))
                received += 1
            }
        }
        #expect(received == total)
        let (status, output) = await helper.finish()
        #expect(status == 0, "helper said: \(output)")
    }

    /// A batch waits at the receiving process's capacity like single sends do, and a batch cancelled while it
    /// waits sends nothing more.
    @Test(arguments: TransportKind.allCases)
    func waitsAtCapacity(_ kind: TransportKind) async throws {
        let capacity = 16
        let (listener, helper, tx) = try await senderToStalledHelper(kind, capacity: capacity)
        defer { listener.close() }
        try await within(10) { try await tx.send(contentsOf: (0..<capacity).map { numbered(UInt64($0)) }) }
        await #expect { try await within(1) { try await tx.send(contentsOf: [numbered(UInt64(capacity))]) } } throws: {
            ($0 as! IPCError).code == .timeout
        }
        helper.writeLine("go")
        try await within(20) { try await tx.send(contentsOf: (capacity..<(capacity + 4)).map { numbered(UInt64($0)) }) }
        try await tx.closeAndWait()
        let (status, output) = await helper.finish()
        #expect(status == 0, "helper said: \(output)")
        #expect(output.contains("received \(capacity + 4)"))
    }
}
