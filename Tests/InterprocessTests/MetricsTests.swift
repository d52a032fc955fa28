import Interprocess
import MetricsTestKit
import Testing

/// What connections and listeners report to swift-metrics, checked with the test backend after a known exchange.
@Suite("Metrics", .timeLimit(.minutes(3)))
struct MetricsTests {
    /// Waits (bounded) until `value()` reaches `expected`: the last report comes when the connection closes, which
    /// happens in the background after both directions ended.
    private func settled(_ expected: Int64, _ value: @escaping @Sendable () -> Int64) async throws -> Int64 {
        do {
            return try await within(20) {
                while value() < expected { try await Task.sleep(for: .milliseconds(10)) }
                return value()
            }
        } catch {
            Issue.record("reached \(value()) of \(expected)")
            throw error
        }
    }

    @Test("messages and bytes delivered and received, credit stalls, refusals and open connections", arguments: TransportKind.allCases)
    func knownExchange(_ kind: TransportKind) async throws {
        let metrics = TestMetrics()
        var options = ChannelOptions()
        options.metricsFactory = metrics
        let listener = try IPC.listen(on: kind.endpoint(in: temporaryDirectory()), sending: .raw, receiving: .raw, options: options)
        defer { listener.close() }
        let dimensions = [("endpoint", "\(listener.endpoint)")]
        let helper = try ChildProcess.helper("echo", listener.endpoint)
        let connection = try await within(20) { try await listener.accept() }
        // 1,000 messages of 32 bytes each way (100 under a sanitizer); the first fifth in a burst, beyond the
        // helper's window of 64 in a normal build.
        let count = scaledCount(1000), burst = count / 5
        for i in 0..<burst { try await within(20) { try await connection.sender.send(numbered(UInt64(i))) } }
        for i in 0..<burst { #expect(try await within(20) { try await connection.receiver.receive() }.map(index) == UInt64(i)) }
        for i in burst..<count {
            try await within(20) { try await connection.sender.send(numbered(UInt64(i))) }
            #expect(try await within(20) { try await connection.receiver.receive() }.map(index) == UInt64(i))
        }
        try await connection.sender.close()
        #expect(try await within(20) { try await connection.receiver.receive() } == nil)
        #expect(await helper.finish().status == 0)

        let delivered = try metrics.expectCounter("interprocess_messages_delivered_total", dimensions)
        let deliveredBytes = try metrics.expectCounter("interprocess_bytes_delivered_total", dimensions)
        let received = try metrics.expectCounter("interprocess_messages_received_total", dimensions)
        let receivedBytes = try metrics.expectCounter("interprocess_bytes_received_total", dimensions)
        let messages = Int64(count), bytes = Int64(count * numbered(0).count)
        #expect(try await settled(messages) { delivered.totalValue } == messages)
        #expect(try await settled(bytes) { deliveredBytes.totalValue } == bytes)
        #expect(try await settled(messages) { received.totalValue } == messages)
        #expect(try await settled(bytes) { receivedBytes.totalValue } == bytes)
        // Reported per batch, not per message.
        #expect(delivered.values.count < count / 5, "\(delivered.values.count) reports for \(count) messages")
        #expect(received.values.count < count / 5, "\(received.values.count) reports for \(count) messages")
        // Every stall counted is timed.
        let stalls = try metrics.expectCounter("interprocess_credit_stalls_total", dimensions)
        let stallTime = try metrics.expectTimer("interprocess_credit_stall_duration", dimensions)
        #expect(Int64(stallTime.values.count) == stalls.totalValue)

        // The listener: one connection open while it lived, and (over a socket, where the handshake is the
        // protocol's) a client that does not speak the protocol refused.
        let open = try metrics.expectGauge("interprocess_connections_open", dimensions)
        #expect(open.values.contains(1))
        guard kind != .sharedMemory else { return }
        let hostile = try RawClient(listener.endpoint)
        hostile.send(Array("GET / HTTP/1.1\r\n\r\n".utf8))
        _ = hostile.readAll()
        let refused = try await within(20) { () async throws -> Int64 in
            while true {
                if let counter = try? metrics.expectCounter("interprocess_connections_refused_total", dimensions + [("reason", "protocolViolation")]) {
                    return counter.totalValue
                }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        #expect(refused == 1)
    }
}
