import Instrumentation

/// The context block at the start of every message of a connection whose two hellos set ``Wire/tracingFlag``
/// (``ChannelOptions/tracing`` on both sides): the fields that the process's instrument (swift-distributed-tracing's
/// `InstrumentationSystem`) injected from the sending task's `ServiceContext`; with a W3C propagator,
/// `traceparent` and `tracestate`.
///
/// Layout: u16 length *n* (at most ``Wire/maxContextBlock``), then *n* bytes of fields, each a u8 key length
/// (1-255), the key (UTF-8), a u16 value length and the value (UTF-8). A message sent without a context has
/// *n* = 0. The message's codec bytes follow.
package enum ContextBlock {
    /// Key-value fields as an instrument injects and extracts them.
    package typealias Fields = [(key: String, value: String)]

    /// Appends the block of the calling task's `ServiceContext` (empty when it has none, or the instrument injects
    /// nothing). Fields that do not fit the block's limits are left out.
    package static func appendCurrent(to buffer: inout [UInt8]) {
        var fields: Fields = []
        if let context = ServiceContext.current {
            InstrumentationSystem.instrument.inject(context, into: &fields, using: FieldInjector())
        }
        append(fields, to: &buffer)
    }

    /// Appends the block of `fields`, leaving out those that do not fit.
    package static func append(_ fields: Fields, to buffer: inout [UInt8]) {
        var body: [UInt8] = []
        for (key, value) in fields {
            let keyBytes = Array(key.utf8), valueBytes = Array(value.utf8)
            guard (1...255).contains(keyBytes.count), valueBytes.count <= Int(UInt16.max),
                  body.count + 3 + keyBytes.count + valueBytes.count <= Wire.maxContextBlock else { continue }
            body.append(UInt8(keyBytes.count))
            body += keyBytes
            body.appendLE(UInt16(valueBytes.count))
            body += valueBytes
        }
        buffer.appendLE(UInt16(body.count))
        buffer += body
    }

    /// A message's context fields and the codec's bytes after them.
    ///
    /// Throws `decodingFailed` when the block is malformed (the message is not one of a traced connection).
    package static func split(_ message: [UInt8]) throws(IPCError) -> (fields: Fields, body: [UInt8]) {
        try message.span.withUnsafeBytes { (bytes) throws(IPCError) in
            func malformed(_ what: String) -> IPCError {
                IPCError(.decodingFailed, "a message's context block is malformed (\(what)); with ChannelOptions.tracing on both sides, every message starts with one")
            }
            guard bytes.count >= 2 else { throw malformed("the message has \(bytes.count) bytes, fewer than its length field") }
            let length = Int(bytes.loadLE(UInt16.self, at: 0))
            guard length <= Wire.maxContextBlock else { throw malformed("it claims \(length) bytes, more than the \(Wire.maxContextBlock) allowed") }
            guard 2 + length <= bytes.count else { throw malformed("it claims \(length) bytes, and the message has \(bytes.count - 2) after the length") }
            var fields: Fields = []
            var reader = ByteReader(UnsafeRawBufferPointer(rebasing: bytes[2..<(2 + length)]))
            while reader.remaining > 0 {
                guard let key = reader.readString8(), !key.isEmpty, let value = reader.readString16() else {
                    throw malformed("a field runs past the block's end, has an empty key, or is not UTF-8")
                }
                fields.append((key, value))
            }
            return (fields, [UInt8](UnsafeRawBufferPointer(rebasing: bytes[(2 + length)...])))
        }
    }

    /// The context the process's instrument extracts from `fields` (a top-level context with what it found).
    package static func context(from fields: Fields) -> ServiceContext {
        var context = ServiceContext.topLevel
        if !fields.isEmpty {
            InstrumentationSystem.instrument.extract(fields, into: &context, using: FieldExtractor())
        }
        return context
    }

    private struct FieldInjector: Injector {
        func inject(_ value: String, forKey key: String, into carrier: inout Fields) {
            carrier.removeAll { $0.key == key }
            carrier.append((key, value))
        }
    }

    private struct FieldExtractor: Extractor {
        func extract(key: String, from carrier: Fields) -> String? {
            carrier.first { $0.key == key }?.value
        }
    }
}
