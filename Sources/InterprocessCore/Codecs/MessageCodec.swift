import Foundation

/// Turns values into message bytes and back. Both ends of a channel must use the same codec and element type;
/// the handshake checks ``name`` and ``typeName`` and refuses a mismatch with an error naming both choices.
public protocol MessageCodec<Value>: Sendable {
    /// The type of the messages: what a sender sends and a receiver returns.
    associatedtype Value: Sendable
    /// The codec's name on the wire, for example `json` or `binary`.
    var name: String { get }
    /// The element type's name on the wire. Defaults to the Swift type's fully qualified name (for example
    /// `MyModule.Job`; docs/wire-protocol.md, "Type names"); override it to talk to programs in other languages.
    var typeName: String { get }
    /// Appends the encoding of `value` to `buffer`.
    func encode(_ value: Value, into buffer: inout [UInt8]) throws(IPCError)
    /// Decodes one message. Called with exactly the bytes of one message.
    func decode(_ bytes: [UInt8]) throws(IPCError) -> Value
}

extension MessageCodec {
    /// The Swift type's fully qualified name, for example `MyModule.Job`.
    public var typeName: String { String(reflecting: Value.self) }
}

/// Each message is one JSON document (UTF-8), written and read as Foundation's `JSONEncoder` and `JSONDecoder` do
/// with their default strategies (see docs/wire-protocol.md, "JSON codec"), so a peer that uses them, or any other
/// JSON library, understands it.
///
/// The codec writes the document while the value encodes itself and reads values where they lie in the message,
/// without building a tree in between. A value that writes to a nested container after writing to its parent
/// again (allowed by `Codable`, rare in practice) cannot be written that way; such a value is encoded by a
/// `JSONEncoder` the codec keeps. Safe to use from several tasks at once.
public struct JSONCodec<Value: Codable & Sendable>: MessageCodec {
    public let typeName: String
    private let treeEncoder = JSONEncoder()
    /// A JSON codec for `type`, announced in the handshake as `typeName` (default: the Swift type's fully
    /// qualified name; set it to talk to programs in other languages).
    public init(_ type: Value.Type = Value.self, typeName: String? = nil) {
        self.typeName = typeName ?? String(reflecting: Value.self)
    }
    public var name: String { "json" }

    public func encode(_ value: Value, into buffer: inout [UInt8]) throws(IPCError) {
        do {
            do {
                try JSONEncoding.encode(value, into: &buffer)
            } catch is JSONEncoding.NeedsTree {
                buffer.append(contentsOf: try treeEncoder.encode(value))
            }
        } catch {
            throw IPCError(.encodingFailed, "could not encode a \(typeName) as JSON", underlying: "\(error)")
        }
    }

    public func decode(_ bytes: [UInt8]) throws(IPCError) -> Value {
        do {
            return try JSONDecoding.decode(Value.self, from: bytes)
        } catch {
            throw IPCError(.decodingFailed, "a message is not a valid JSON \(typeName) (\(bytes.count) bytes starting \(preview(bytes)))", underlying: "\(error)")
        }
    }
}

/// Raw bytes: the message is the array, nothing added. The transport's copy is the only copy.
public struct RawBytesCodec: MessageCodec {
    /// The raw-bytes codec (also `.raw`).
    public init() {}
    public var name: String { "raw" }
    public var typeName: String { "bytes" }
    @inlinable
    public func encode(_ value: [UInt8], into buffer: inout [UInt8]) throws(IPCError) { buffer.append(contentsOf: value) }
    @inlinable
    public func decode(_ bytes: [UInt8]) throws(IPCError) -> [UInt8] { bytes }
}

/// Each message is one UTF-8 string (any content, newlines included). What the `ipc` tool speaks by default.
public struct StringCodec: MessageCodec {
    /// The UTF-8 string codec (also `.utf8`).
    public init() {}
    public var name: String { "utf8" }
    public var typeName: String { "string" }
    public func encode(_ value: String, into buffer: inout [UInt8]) throws(IPCError) { buffer.append(contentsOf: value.utf8) }
    public func decode(_ bytes: [UInt8]) throws(IPCError) -> String {
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw IPCError(.decodingFailed, "a message is not valid UTF-8 (\(bytes.count) bytes starting \(preview(bytes))); the peer should send text or use the raw codec")
        }
        return text
    }
}

/// The compact binary `Codable` format (see docs/wire-protocol.md, "Binary codec"). Faster and smaller than JSON.
///
/// A codec keeps one encoder's and one decoder's working state between messages (copies of the codec share
/// it), so a connection's codec codes each message without setting up its containers again. Coding from
/// several tasks at once through one codec is safe: a call that finds the state in use makes its own. The
/// encoder, decoder and containers that a value's `encode(to:)` or `init(from:)` is given are valid during
/// that call only (a type that keeps its decoder to decode lazily later does not work with this codec).
public struct BinaryCodec<Value: Codable & Sendable>: MessageCodec {
    public let typeName: String
    private let scratch = BinaryCodingScratch()
    /// A binary codec for `type`, announced in the handshake as `typeName` (default: the Swift type's fully
    /// qualified name).
    public init(_ type: Value.Type = Value.self, typeName: String? = nil) {
        self.typeName = typeName ?? String(reflecting: Value.self)
    }
    public var name: String { "binary" }

    public func encode(_ value: Value, into buffer: inout [UInt8]) throws(IPCError) {
        do {
            try BinaryEncoding.encode(value, into: &buffer, reusing: scratch)
        } catch {
            throw IPCError(.encodingFailed, "could not encode a \(typeName) in the binary codec", underlying: "\(error)")
        }
    }

    public func decode(_ bytes: [UInt8]) throws(IPCError) -> Value {
        do {
            return try BinaryEncoding.decode(Value.self, from: bytes, reusing: scratch)
        } catch {
            throw IPCError(.decodingFailed, "a message is not a valid binary-encoded \(typeName) (\(bytes.count) bytes starting \(preview(bytes)))", underlying: "\(error)")
        }
    }
}

/// A codec for a direction that carries nothing (a one-way connection's other direction).
public struct NoMessages: MessageCodec {
    /// The codec of a direction that carries nothing.
    public init() {}
    public var name: String { "none" }
    public var typeName: String { "none" }
    public func encode(_ value: Never, into buffer: inout [UInt8]) throws(IPCError) {}
    public func decode(_ bytes: [UInt8]) throws(IPCError) -> Never {
        throw IPCError(.protocolViolation, "the peer sent a message on a direction that carries none")
    }
}

extension MessageCodec {
    /// JSON for any `Codable` type: `codec: .json(Job.self)`.
    public static func json<T>(_ type: T.Type = T.self) -> JSONCodec<T> where Self == JSONCodec<T> { JSONCodec(type) }
    /// The compact binary `Codable` format: `codec: .binary(Job.self)`.
    public static func binary<T>(_ type: T.Type = T.self) -> BinaryCodec<T> where Self == BinaryCodec<T> { BinaryCodec(type) }
}

extension MessageCodec where Self == RawBytesCodec {
    /// Raw bytes (`[UInt8]`).
    public static var raw: RawBytesCodec { RawBytesCodec() }
}

extension MessageCodec where Self == StringCodec {
    /// UTF-8 strings.
    public static var utf8: StringCodec { StringCodec() }
}

package func preview(_ bytes: [UInt8]) -> String {
    bytes.prefix(8).map { b in
        let s = String(b, radix: 16)
        return s.count == 1 ? "0" + s : s
    }.joined(separator: " ")
}

/// Plain newline-delimited text with no handshake and no framing, to talk to any program that reads or writes
/// lines on a socket (`nc`, a shell script, a Go program using `bufio`). Each message is one line without its
/// newline; a last line without a newline is delivered at the end of the stream. There is no handshake, so the
/// two ends cannot check each other's types, and flow control is the kernel's socket buffers.
public struct LinesCodec: MessageCodec {
    /// The lines codec (also `.lines`).
    public init() {}
    public var name: String { "lines" }
    public var typeName: String { "string" }
    public func encode(_ value: String, into buffer: inout [UInt8]) throws(IPCError) {
        guard !value.utf8.contains(UInt8(ascii: "\n")) else {
            throw IPCError(.encodingFailed, "a message for the lines mode contains a newline; send one line per message")
        }
        buffer.append(contentsOf: value.utf8)
    }
    public func decode(_ bytes: [UInt8]) throws(IPCError) -> String {
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw IPCError(.decodingFailed, "a line is not valid UTF-8 (\(bytes.count) bytes starting \(preview(bytes)))")
        }
        return text
    }
}

extension MessageCodec where Self == LinesCodec {
    /// Newline-delimited text with no handshake (see ``LinesCodec``).
    public static var lines: LinesCodec { LinesCodec() }
}
