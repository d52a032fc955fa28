import Foundation
import Interprocess
import Logging
import Testing

/// A log handler that keeps every entry, for checking what a connection logs.
final class CapturedLog: @unchecked Sendable {
    struct Entry: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
    }
    private let lock = NSLock()
    private var entries: [Entry] = []

    var all: [Entry] { lock.withLock { entries } }

    func append(_ entry: Entry) { lock.withLock { entries.append(entry) } }

    func logger() -> Logger {
        var logger = Logger(label: "test") { _ in Handler(log: self) }
        logger.logLevel = .trace
        return logger
    }

    struct Handler: LogHandler {
        let log: CapturedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            let merged = metadata.merging(event.metadata ?? [:]) { $1 }
            log.append(Entry(level: event.level, message: event.message.description, metadata: merged.mapValues { "\($0)" }))
        }
    }
}

@Suite("Logging", .timeLimit(.minutes(1)))
struct LoggingTests {
    @Test("by default nothing is logged")
    func silentByDefault() {
        #expect(ChannelOptions().logger.handler is SwiftLogNoOpLogHandler)
    }

    /// A good connection logs that it was established and closed (debug), nothing per message; a peer that breaks
    /// the protocol is a warning; every line names the endpoint, the peer and the connection.
    @Test("connections log their start, end and failures with metadata, and nothing per message", arguments: TransportKind.sockets)
    func connectionEvents(_ kind: TransportKind) async throws {
        let log = CapturedLog()
        var options = ChannelOptions()
        options.logger = log.logger()
        let listener = try IPC.listen(on: kind.endpoint(in: temporaryDirectory()), sending: .raw, receiving: .raw, options: options)
        defer { listener.close() }
        let helper = try ChildProcess.helper("echo", listener.endpoint)
        let good = try await within(20) { try await listener.accept() }
        for i in 0..<200 {
            try await good.sender.send(numbered(UInt64(i)))
            #expect(try await within(20) { try await good.receiver.receive() }.map(index) == UInt64(i))
        }
        try await good.sender.close()
        #expect(try await within(20) { try await good.receiver.receive() } == nil)
        #expect(await helper.finish().status == 0)
        // A hostile client: a proper handshake, then a frame of an unknown type.
        let hostile = try RawClient(listener.endpoint)
        hostile.send(HostileInputTests.validHello)
        let bad = try await within(20) { try await listener.accept() }
        hostile.send([8, 0, 0, 0, 0x7F, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        await #expect(throws: IPCError.self) { _ = try await within(20) { try await bad.receiver.receive() } }

        let entries = log.all
        let established = entries.filter { $0.message == "connection established" }
        #expect(established.count == 2)
        #expect(established.allSatisfy { $0.level == .debug && $0.metadata["endpoint"] == "\(listener.endpoint)" && $0.metadata["peer"] != nil && $0.metadata["connection"] != nil })
        let warnings = entries.filter { $0.level == .warning }
        #expect(warnings.count == 1, "\(warnings.map(\.message))")
        #expect(warnings.first?.message.contains("unknown type") == true)
        #expect(warnings.first?.metadata["error"] == "protocolViolation")
        #expect(warnings.first?.metadata["connection"] == established.last?.metadata["connection"])
        #expect(warnings.first?.metadata["connection"] != established.first?.metadata["connection"])
        // 200 messages each way, a handful of lines.
        #expect(entries.count <= 10, "\(entries.map(\.message))")
    }
}
