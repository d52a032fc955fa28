// The JSON codec's encoder: writes the document straight into the message buffer while the value's
// `encode(to:)` runs, instead of building a tree first. Its output is what Foundation's `JSONEncoder` writes with
// its default strategies (numbers as Swift prints them without a trailing ".0", "/" escaped, `Date` as seconds
// since 2001, `Data` as Base64, `URL` as its absolute string, `Decimal` as a number); object keys come in the
// order the value encodes them.
//
// Writing as it goes needs the containers to be used nested in time: a container is written to only while no
// container it opened since is still written to. `Codable` allows more (a value may keep a nested container and
// write to it after writing to its parent); when that happens the encoder gives up with `NeedsTree`, and
// `JSONCodec` encodes that value with Foundation's tree-building `JSONEncoder` instead.
import Foundation

package enum JSONEncoding {
    /// The value used its containers in an order a streaming writer cannot follow.
    package struct NeedsTree: Error {}

    package static func encode<T: Encodable>(_ value: T, into buffer: inout [UInt8]) throws {
        let writer = JSONWriter()
        swap(&writer.bytes, &buffer)
        defer { swap(&writer.bytes, &buffer) }
        let start = writer.bytes.count
        do {
            guard try writer.encodeSpecial(value) else {
                let slot = writer.push(.slot)
                try value.encode(to: JSONEncoderImpl(writer: writer, frame: slot, path: .root))
                guard !writer.stack.isEmpty, writer.stack[0].id == slot else { throw NeedsTree() }
                // A top-level value that wrote nothing is an error in Foundation's encoder; let it say so.
                guard writer.stack[0].kind != .slot else { throw NeedsTree() }
                while !writer.stack.isEmpty { writer.closeTop() }
                return
            }
        } catch {
            writer.bytes.removeSubrange(start...)
            throw error
        }
    }
}

/// The document being written and the containers open in it, innermost last.
final class JSONWriter {
    enum Kind: UInt8 {
        /// A value's place, not written yet: its encoder has not been asked for a container.
        case slot
        /// A single value was written into the place.
        case single
        case object
        case array
    }
    struct Frame {
        var id: Int
        var kind: Kind
        var count: Int
    }

    /// One encode uses the writer, from one thread: the dynamic exclusivity checks buy nothing.
    @exclusivity(unchecked) var bytes: [UInt8] = []
    @exclusivity(unchecked) var stack: [Frame] = []
    @exclusivity(unchecked) private var nextID = 0

    init() {
        stack.reserveCapacity(8)
    }

    func push(_ kind: Kind) -> Int {
        nextID += 1
        stack.append(Frame(id: nextID, kind: kind, count: 0))
        return nextID
    }

    /// Opens a nested container (or, for `.slot`, a place for a super encoder) after its key or comma.
    func pushNested(_ kind: Kind) -> Int {
        let id = push(.slot)
        // A fresh innermost place always opens.
        if kind != .slot { try! open(id, as: kind) }
        return id
    }

    /// Closes the innermost open container (a place nobody wrote to becomes an empty object, as in Foundation).
    func closeTop() {
        let frame = stack.removeLast()
        switch frame.kind {
        case .slot: bytes.append(contentsOf: [UInt8(ascii: "{"), UInt8(ascii: "}")])
        case .single: break
        case .object: bytes.append(UInt8(ascii: "}"))
        case .array: bytes.append(UInt8(ascii: "]"))
        }
    }

    /// Makes `id` the innermost open container, closing those opened inside it and no longer written to.
    @inline(__always)
    func focus(_ id: Int) throws {
        while let last = stack.last, last.id != id {
            guard last.id > id else { throw JSONEncoding.NeedsTree() }
            closeTop()
        }
        guard !stack.isEmpty else { throw JSONEncoding.NeedsTree() }
    }

    /// The place `id` becomes a container of `kind` (an object asked for twice stays one object, as in
    /// Foundation).
    func open(_ id: Int, as kind: Kind) throws {
        try focus(id)
        let current = stack[stack.count - 1].kind
        if current == .slot {
            stack[stack.count - 1].kind = kind
            bytes.append(kind == .object ? UInt8(ascii: "{") : UInt8(ascii: "["))
        } else if current != .object || kind != .object {
            throw JSONEncoding.NeedsTree()
        }
    }

    /// Starts an entry of the object `id`: its comma and its key.
    @inline(__always)
    func beginEntry(_ id: Int, key: some CodingKey) throws {
        try focus(id)
        if stack[stack.count - 1].count > 0 { bytes.append(UInt8(ascii: ",")) }
        stack[stack.count - 1].count += 1
        var name = key.stringValue
        name.withUTF8 { appendString($0) }
        bytes.append(UInt8(ascii: ":"))
    }

    /// Starts an element of the array `id`: its comma.
    @inline(__always)
    func beginElement(_ id: Int) throws {
        try focus(id)
        if stack[stack.count - 1].count > 0 { bytes.append(UInt8(ascii: ",")) }
        stack[stack.count - 1].count += 1
    }

    /// Writes a value at the current place: a primitive or special type directly, anything else through its
    /// `encode(to:)` with a place of its own, closed when it returns.
    func encodeValue<T: Encodable>(_ value: T, path: @autoclosure () -> CodingPath) throws {
        if try encodeSpecial(value) { return }
        let depth = stack.count
        let slot = push(.slot)
        try value.encode(to: JSONEncoderImpl(writer: self, frame: slot, path: path()))
        guard stack.count > depth, stack[depth].id == slot else { throw JSONEncoding.NeedsTree() }
        while stack.count > depth { closeTop() }
    }

    /// Writes the primitives and the types Foundation's encoder writes in a form of its own; false for others.
    @inline(__always)
    func encodeSpecial<T: Encodable>(_ value: T) throws -> Bool {
        if let kind = PrimitiveKind.of(T.self) {
            // `kind` names T exactly, so the bit casts are between identical types.
            switch kind {
            case .string:
                var s = unsafeBitCast(value, to: String.self)
                s.withUTF8 { appendString($0) }
            case .bytes: appendArray(unsafeBitCast(value, to: [UInt8].self))
            case .data: appendBase64(unsafeBitCast(value, to: Data.self))
            case .int: appendInteger(unsafeBitCast(value, to: Int.self))
            case .uint: appendInteger(unsafeBitCast(value, to: UInt.self))
            case .int64: appendInteger(unsafeBitCast(value, to: Int64.self))
            case .uint64: appendInteger(unsafeBitCast(value, to: UInt64.self))
            case .int32: appendInteger(unsafeBitCast(value, to: Int32.self))
            case .uint32: appendInteger(unsafeBitCast(value, to: UInt32.self))
            case .int16: appendInteger(unsafeBitCast(value, to: Int16.self))
            case .uint16: appendInteger(unsafeBitCast(value, to: UInt16.self))
            case .int8: appendInteger(unsafeBitCast(value, to: Int8.self))
            case .uint8: appendInteger(unsafeBitCast(value, to: UInt8.self))
            case .bool: appendBool(unsafeBitCast(value, to: Bool.self))
            case .double: try appendFloat(unsafeBitCast(value, to: Double.self))
            case .float: try appendFloat(unsafeBitCast(value, to: Float.self))
            }
            return true
        }
        switch ObjectIdentifier(T.self) {
        case ObjectIdentifier(URL.self):
            var s = (value as! URL).absoluteString
            s.withUTF8 { appendString($0) }
        case ObjectIdentifier(Decimal.self):
            bytes.append(contentsOf: (value as! Decimal).description.utf8)
        default:
            return false
        }
        return true
    }

    func appendNull() { bytes.append(contentsOf: [UInt8(ascii: "n"), UInt8(ascii: "u"), UInt8(ascii: "l"), UInt8(ascii: "l")]) }

    func appendBool(_ value: Bool) {
        if value {
            bytes.append(contentsOf: [UInt8(ascii: "t"), UInt8(ascii: "r"), UInt8(ascii: "u"), UInt8(ascii: "e")])
        } else {
            bytes.append(contentsOf: [UInt8(ascii: "f"), UInt8(ascii: "a"), UInt8(ascii: "l"), UInt8(ascii: "s"), UInt8(ascii: "e")])
        }
    }

    func appendInteger<I: FixedWidthInteger>(_ value: I) {
        if value < 0 { bytes.append(UInt8(ascii: "-")) }
        var magnitude = UInt64(value.magnitude)
        // At most 20 digits, written backwards into a 24-byte stack buffer.
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 24) { digits in
            var i = 24
            repeat {
                i -= 1
                digits[i] = UInt8(ascii: "0") + UInt8(magnitude % 10)
                magnitude /= 10
            } while magnitude > 0
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: digits[i...]))
        }
    }

    /// Shortest round-trip form, as Swift prints it, without a trailing ".0" (what Foundation writes).
    func appendFloat<F: BinaryFloatingPoint & LosslessStringConvertible>(_ value: F) throws {
        guard value.isFinite else {
            throw EncodingError.invalidValue(value, .init(codingPath: [], debugDescription: "Unable to encode \(F.self).\(value) directly in JSON."))
        }
        var text = value.description
        text.withUTF8 { utf8 in
            var count = utf8.count
            if count > 2, utf8[count - 2] == UInt8(ascii: "."), utf8[count - 1] == UInt8(ascii: "0") { count -= 2 }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[..<count]))
        }
    }

    /// A JSON string: `"`, `\`, `/` and control characters escaped as Foundation escapes them, the rest as is.
    func appendString(_ utf8: UnsafeBufferPointer<UInt8>) {
        bytes.append(UInt8(ascii: "\""))
        var runStart = 0
        for i in 0..<utf8.count {
            let b = utf8[i]
            guard b < 0x20 || b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") || b == UInt8(ascii: "/") else { continue }
            if runStart < i { bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart..<i])) }
            runStart = i + 1
            bytes.append(UInt8(ascii: "\\"))
            switch b {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): bytes.append(b)
            case 0x08: bytes.append(UInt8(ascii: "b"))
            case 0x0C: bytes.append(UInt8(ascii: "f"))
            case 0x0A: bytes.append(UInt8(ascii: "n"))
            case 0x0D: bytes.append(UInt8(ascii: "r"))
            case 0x09: bytes.append(UInt8(ascii: "t"))
            default:
                let hex = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: [UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(b >> 4)], hex[Int(b & 0xF)]])
            }
        }
        if runStart < utf8.count { bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart...])) }
        bytes.append(UInt8(ascii: "\""))
    }

    func appendArray(_ values: [UInt8]) {
        bytes.append(UInt8(ascii: "["))
        for (i, v) in values.enumerated() {
            if i > 0 { bytes.append(UInt8(ascii: ",")) }
            appendInteger(v)
        }
        bytes.append(UInt8(ascii: "]"))
    }

    func appendBase64(_ data: Data) {
        var text = data.base64EncodedString()
        text.withUTF8 { appendString($0) }
    }
}

/// An encoder for one place in the document.
struct JSONEncoderImpl: Encoder {
    let writer: JSONWriter
    let frame: Int
    let path: CodingPath
    var codingPath: [any CodingKey] { path.keys }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        // A misuse is reported at the container's first write (Encoder's method cannot throw).
        let opened = (try? writer.open(frame, as: .object)) != nil
        return KeyedEncodingContainer(JSONKeyedEncoder<Key>(writer: writer, frame: opened ? frame : -1, path: path))
    }
    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        let opened = (try? writer.open(frame, as: .array)) != nil
        return JSONUnkeyedEncoder(writer: writer, frame: opened ? frame : -1, path: path)
    }
    func singleValueContainer() -> any SingleValueEncodingContainer {
        JSONSingleEncoder(writer: writer, frame: frame, path: path)
    }
}

struct JSONKeyedEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let writer: JSONWriter
    /// The object this container writes to; -1 when it could not be opened.
    let frame: Int
    let path: CodingPath
    var codingPath: [any CodingKey] { path.keys }

    mutating func encodeNil(forKey key: Key) throws {
        try writer.beginEntry(frame, key: key)
        writer.appendNull()
    }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try writer.beginEntry(frame, key: key)
        try writer.encodeValue(value, path: .key(key, path))
    }
    mutating func encode(_ value: Bool, forKey key: Key) throws {
        try writer.beginEntry(frame, key: key)
        writer.appendBool(value)
    }
    mutating func encode(_ value: String, forKey key: Key) throws {
        try writer.beginEntry(frame, key: key)
        var value = value
        value.withUTF8 { writer.appendString($0) }
    }
    mutating func encode(_ value: Double, forKey key: Key) throws {
        try writer.beginEntry(frame, key: key)
        try writer.appendFloat(value)
    }
    mutating func encode(_ value: Float, forKey key: Key) throws {
        try writer.beginEntry(frame, key: key)
        try writer.appendFloat(value)
    }
    @inline(__always)
    private func integer<I: FixedWidthInteger>(_ value: I, _ key: Key) throws {
        try writer.beginEntry(frame, key: key)
        writer.appendInteger(value)
    }
    mutating func encode(_ value: Int, forKey key: Key) throws { try integer(value, key) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { try integer(value, key) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { try integer(value, key) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { try integer(value, key) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { try integer(value, key) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { try integer(value, key) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { try integer(value, key) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { try integer(value, key) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { try integer(value, key) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { try integer(value, key) }

    /// The nested containers and encoders below are opened in place; the streaming rule (see the file's comment)
    /// applies to them, and a misuse surfaces at their next write.
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        KeyedEncodingContainer(JSONKeyedEncoder<NestedKey>(writer: writer, frame: nested(key, .object), path: .key(key, path)))
    }
    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        JSONUnkeyedEncoder(writer: writer, frame: nested(key, .array), path: .key(key, path))
    }
    mutating func superEncoder() -> any Encoder { superEncoder(forKey: Key(stringValue: "super")!) }
    mutating func superEncoder(forKey key: Key) -> any Encoder {
        JSONEncoderImpl(writer: writer, frame: nested(key, .slot), path: .key(key, path))
    }

    private func nested(_ key: Key, _ kind: JSONWriter.Kind) -> Int {
        guard (try? writer.beginEntry(frame, key: key)) != nil else { return -1 }
        return writer.pushNested(kind)
    }
}

struct JSONUnkeyedEncoder: UnkeyedEncodingContainer {
    let writer: JSONWriter
    /// The array this container writes to; -1 when it could not be opened.
    let frame: Int
    let path: CodingPath
    var count = 0
    var codingPath: [any CodingKey] { path.keys }

    init(writer: JSONWriter, frame: Int, path: CodingPath) {
        self.writer = writer
        self.frame = frame
        self.path = path
    }

    mutating func encodeNil() throws {
        try writer.beginElement(frame)
        writer.appendNull()
        count += 1
    }
    mutating func encode<T: Encodable>(_ value: T) throws {
        try writer.beginElement(frame)
        try writer.encodeValue(value, path: path)
        count += 1
    }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        KeyedEncodingContainer(JSONKeyedEncoder<NestedKey>(writer: writer, frame: nested(.object), path: path))
    }
    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        JSONUnkeyedEncoder(writer: writer, frame: nested(.array), path: path)
    }
    mutating func superEncoder() -> any Encoder {
        JSONEncoderImpl(writer: writer, frame: nested(.slot), path: path)
    }

    private mutating func nested(_ kind: JSONWriter.Kind) -> Int {
        guard (try? writer.beginElement(frame)) != nil else { return -1 }
        count += 1
        return writer.pushNested(kind)
    }
}

struct JSONSingleEncoder: SingleValueEncodingContainer {
    let writer: JSONWriter
    let frame: Int
    let path: CodingPath
    var codingPath: [any CodingKey] { path.keys }

    /// The place must be the innermost one and still empty; it then holds the value written next.
    private func claim() throws {
        try writer.focus(frame)
        guard writer.stack[writer.stack.count - 1].kind == .slot else { throw JSONEncoding.NeedsTree() }
        writer.stack[writer.stack.count - 1].kind = .single
    }

    mutating func encodeNil() throws {
        try claim()
        writer.appendNull()
    }
    mutating func encode<T: Encodable>(_ value: T) throws {
        try claim()
        if try !writer.encodeSpecial(value) {
            // A value that is not written directly takes the place over: its own containers open it.
            writer.stack[writer.stack.count - 1].kind = .slot
            try value.encode(to: JSONEncoderImpl(writer: writer, frame: frame, path: path))
        }
    }
}
