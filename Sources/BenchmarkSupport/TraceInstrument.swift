import Instrumentation

/// A minimal W3C-style instrument for the tracing tests and the test helper: it carries a context's
/// ``ServiceContext/traceParent`` and ``ServiceContext/traceState`` as the `traceparent` and `tracestate` fields
/// (what a W3C propagator writes), and extracts them back. Bootstrap it once per process with
/// ``TraceInstrument/bootstrapOnce()``.
public struct TraceInstrument: Instrument {
    public init() {}

    /// Bootstraps this instrument as the process's (`InstrumentationSystem` takes one bootstrap per process).
    public static func bootstrapOnce() { _ = bootstrapped }
    private static let bootstrapped: Void = { InstrumentationSystem.bootstrap(TraceInstrument()) }()

    public func inject<Carrier, Inject: Injector>(_ context: ServiceContext, into carrier: inout Carrier, using injector: Inject)
    where Inject.Carrier == Carrier {
        if let parent = context.traceParent { injector.inject(parent, forKey: "traceparent", into: &carrier) }
        if let state = context.traceState { injector.inject(state, forKey: "tracestate", into: &carrier) }
    }

    public func extract<Carrier, Extract: Extractor>(_ carrier: Carrier, into context: inout ServiceContext, using extractor: Extract)
    where Extract.Carrier == Carrier {
        context.traceParent = extractor.extract(key: "traceparent", from: carrier)
        context.traceState = extractor.extract(key: "tracestate", from: carrier)
    }
}

private enum TraceParentKey: ServiceContextKey { typealias Value = String }
private enum TraceStateKey: ServiceContextKey { typealias Value = String }

extension ServiceContext {
    /// A W3C `traceparent` value (`00-<trace id>-<span id>-<flags>`).
    public var traceParent: String? {
        get { self[TraceParentKey.self] }
        set { self[TraceParentKey.self] = newValue }
    }

    /// A W3C `tracestate` value.
    public var traceState: String? {
        get { self[TraceStateKey.self] }
        set { self[TraceStateKey.self] = newValue }
    }
}
