import CoreMetrics

/// A connection's metrics (swift-metrics), all with the endpoint as a dimension. Messages and bytes are counted
/// once per credit, that is per batch of messages (a quarter of the window, or 256 KiB), and once more when the
/// connection closes, never per message:
///
/// - `interprocess_messages_delivered_total`, `interprocess_bytes_delivered_total`: messages (payload bytes) this
///   side sent that the peer's application took, as the peer's credits report them;
/// - `interprocess_messages_received_total`, `interprocess_bytes_received_total`: messages this side's
///   application took;
/// - `interprocess_credit_stalls_total` and the timer `interprocess_credit_stall_duration`: sends that had to wait
///   for the receiver (its capacity or the byte limit), and how long each waited;
/// - `interprocess_dead_peers_total`: peers declared gone by the heartbeats;
/// - `interprocess_connection_failures_total`, with the error's code as a second dimension.
package final class ConnectionMetrics: Sendable {
    private let endpoint: String
    private let factory: any MetricsFactory
    private let delivered: Counter
    private let deliveredBytes: Counter
    private let received: Counter
    private let receivedBytes: Counter
    private let creditStalls: Counter
    private let creditStallTime: Timer
    private let deadPeers: Counter

    package init(endpoint: String, factory: any MetricsFactory) {
        self.endpoint = endpoint
        self.factory = factory
        let dimensions = [("endpoint", endpoint)]
        delivered = Counter(label: "interprocess_messages_delivered_total", dimensions: dimensions, factory: factory)
        deliveredBytes = Counter(label: "interprocess_bytes_delivered_total", dimensions: dimensions, factory: factory)
        received = Counter(label: "interprocess_messages_received_total", dimensions: dimensions, factory: factory)
        receivedBytes = Counter(label: "interprocess_bytes_received_total", dimensions: dimensions, factory: factory)
        creditStalls = Counter(label: "interprocess_credit_stalls_total", dimensions: dimensions, factory: factory)
        creditStallTime = Timer(label: "interprocess_credit_stall_duration", dimensions: dimensions, factory: factory)
        deadPeers = Counter(label: "interprocess_dead_peers_total", dimensions: dimensions, factory: factory)
    }

    func record(_ delta: ConnectionState.Totals) {
        if delta.delivered > 0 { delivered.increment(by: delta.delivered) }
        if delta.deliveredBytes > 0 { deliveredBytes.increment(by: delta.deliveredBytes) }
        if delta.received > 0 { received.increment(by: delta.received) }
        if delta.receivedBytes > 0 { receivedBytes.increment(by: delta.receivedBytes) }
    }

    func creditStall(nanoseconds: UInt64) {
        creditStalls.increment()
        creditStallTime.recordNanoseconds(nanoseconds)
    }

    func deadPeer() { deadPeers.increment() }

    func failed(_ code: IPCError.Code) {
        Counter(label: "interprocess_connection_failures_total", dimensions: [("endpoint", endpoint), ("code", "\(code)")], factory: factory).increment()
    }
}
