import CoreMetrics
import Synchronization

/// A metrics backend that adds up everything it is given, in this process: what a real backend costs the
/// library at the least (the library's own work to report, and one atomic add per report). `ipc bench
/// --metrics-cost` runs W2 with and without it.
final class CountingMetrics: MetricsFactory, Sendable {
    /// Reports received, of every kind.
    fileprivate let reports = Atomic<Int>(0)
    var reportCount: Int { reports.load(ordering: .relaxed) }

    private final class Handler: CounterHandler, FloatingPointCounterHandler, RecorderHandler, TimerHandler, MeterHandler, Sendable {
        let value = Atomic<Int64>(0)
        let reports: CountingMetrics
        init(_ reports: CountingMetrics) { self.reports = reports }
        private func add(_ amount: Int64) {
            value.add(amount, ordering: .relaxed)
            reports.reports.add(1, ordering: .relaxed)
        }
        func increment(by amount: Int64) { add(amount) }
        func increment(by amount: Double) { add(Int64(amount)) }
        func reset() { value.store(0, ordering: .relaxed) }
        func record(_ value: Int64) { add(value) }
        func record(_ value: Double) { add(Int64(value)) }
        func recordNanoseconds(_ duration: Int64) { add(duration) }
        func set(_ value: Int64) { add(value) }
        func set(_ value: Double) { add(Int64(value)) }
        func decrement(by amount: Double) { add(-Int64(amount)) }
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler { Handler(self) }
    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler { Handler(self) }
    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler { Handler(self) }
    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler { Handler(self) }
    func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler { Handler(self) }
    func destroyCounter(_ handler: any CounterHandler) {}
    func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {}
    func destroyRecorder(_ handler: any RecorderHandler) {}
    func destroyTimer(_ handler: any TimerHandler) {}
    func destroyMeter(_ handler: any MeterHandler) {}
}
