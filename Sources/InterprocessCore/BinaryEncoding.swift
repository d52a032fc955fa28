// The compact binary Codable format. Layout (docs/wire-protocol.md, "Binary codec"):
//   value    := u32 length (0xFFFF_FFFF for nil) + region
//   region   := primitive bytes | keyed entries | unkeyed elements
//   keyed    := (u8 key length + key UTF-8 + value)*      unkeyed := value*
//   primitives: fixed-width little-endian integers and IEEE floats, Bool as one byte, String as UTF-8,
//   [UInt8] and Data as their bytes.
// A message is one value. Every length read is checked against the enclosing region.
import Foundation

/// Errors of the binary codec, wrapped into ``IPCError`` by ``BinaryCodec``.
package struct BinaryCodingError: Error, CustomStringConvertible {
    package var description: String
}

package enum BinaryEncoding {
    static let nilMarker = UInt32.max

    package static func encode<T: Encodable>(_ value: T, into buffer: inout [UInt8]) throws {
        let storage = EncodingStorage()
        swap(&storage.bytes, &buffer)
        defer { swap(&storage.bytes, &buffer) }
        try storage.encodeValue(value, codingPath: [])
    }

    package static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        let input = DecodingInput(bytes: bytes)
        guard let region = try input.valueRegion(at: 0, end: bytes.count, codingPath: []) else {
            if let optional = T.self as? any _OptionalType.Type { return optional.makeNil() as! T }
            throw BinaryCodingError(description: "the message is nil but \(T.self) is not optional")
        }
        guard region.upperBound == bytes.count else {
            throw BinaryCodingError(description: "\(bytes.count - region.upperBound) trailing bytes after the value")
        }
        return try input.decodeValue(T.self, region: region, codingPath: [])
    }
}

package protocol _OptionalType { static func makeNil() -> Self }
extension Optional: _OptionalType { package static func makeNil() -> Self { nil } }

// MARK: - Encoding

final class EncodingStorage {
    var bytes: [UInt8] = []

    /// Appends a length slot, encodes the value's region after it, then fills the slot.
    func encodeValue<T: Encodable>(_ value: T, codingPath: [any CodingKey]) throws {
        let slot = bytes.count
        bytes.appendLE(UInt32(0))
        if try !encodePrimitive(value) {
            let encoder = BinaryEncoderImpl(storage: self, slot: slot, codingPath: codingPath)
            try value.encode(to: encoder)
            if encoder.isNil { return }
        }
        closeSlot(slot)
    }

    func encodeNilValue() { bytes.appendLE(BinaryEncoding.nilMarker) }

    func closeSlot(_ slot: Int) {
        let length = bytes.count - slot - 4
        bytes.storeLE(UInt32(truncatingIfNeeded: length), at: slot)
    }

    /// Fast paths for types whose region is their raw bytes. Returns false for anything else.
    /// The type is found by one dictionary lookup on its metadata, not by trying a cast per candidate.
    @inline(__always)
    func encodePrimitive<T>(_ value: T) throws -> Bool {
        guard let kind = PrimitiveKind.of(T.self) else { return false }
        switch kind {
        case .string: bytes.append(contentsOf: (value as! String).utf8)
        case .bytes: bytes.append(contentsOf: value as! [UInt8])
        case .data: bytes.append(contentsOf: value as! Data)
        case .int: bytes.appendLE(Int64(value as! Int))
        case .uint: bytes.appendLE(UInt64(value as! UInt))
        case .int64: bytes.appendLE(value as! Int64)
        case .uint64: bytes.appendLE(value as! UInt64)
        case .int32: bytes.appendLE(value as! Int32)
        case .uint32: bytes.appendLE(value as! UInt32)
        case .int16: bytes.appendLE(value as! Int16)
        case .uint16: bytes.appendLE(value as! UInt16)
        case .int8: bytes.append(UInt8(bitPattern: value as! Int8))
        case .uint8: bytes.append(value as! UInt8)
        case .bool: bytes.append((value as! Bool) ? 1 : 0)
        case .double: bytes.appendLE((value as! Double).bitPattern)
        case .float: bytes.appendLE((value as! Float).bitPattern)
        }
        return true
    }

    func appendKey(_ key: some CodingKey) throws {
        let utf8 = key.stringValue.utf8
        guard utf8.count <= 255 else {
            throw EncodingError.invalidValue(key.stringValue, .init(codingPath: [key], debugDescription: "keys longer than 255 bytes are not supported by the binary codec"))
        }
        bytes.append(UInt8(utf8.count))
        bytes.append(contentsOf: utf8)
    }
}

/// The types the binary codec writes as raw bytes.
enum PrimitiveKind {
    case string, bytes, data, int, uint, int64, uint64, int32, uint32, int16, uint16, int8, uint8, bool, double, float

    private static let table: [ObjectIdentifier: PrimitiveKind] = [
        ObjectIdentifier(String.self): .string, ObjectIdentifier([UInt8].self): .bytes,
        ObjectIdentifier(Data.self): .data, ObjectIdentifier(Int.self): .int, ObjectIdentifier(UInt.self): .uint,
        ObjectIdentifier(Int64.self): .int64, ObjectIdentifier(UInt64.self): .uint64,
        ObjectIdentifier(Int32.self): .int32, ObjectIdentifier(UInt32.self): .uint32,
        ObjectIdentifier(Int16.self): .int16, ObjectIdentifier(UInt16.self): .uint16,
        ObjectIdentifier(Int8.self): .int8, ObjectIdentifier(UInt8.self): .uint8, ObjectIdentifier(Bool.self): .bool,
        ObjectIdentifier(Double.self): .double, ObjectIdentifier(Float.self): .float,
    ]

    @inline(__always)
    static func of(_ type: Any.Type) -> PrimitiveKind? { table[ObjectIdentifier(type)] }
}

final class BinaryEncoderImpl: Encoder {
    let storage: EncodingStorage
    /// The length slot of the value this encoder writes.
    let slot: Int
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    var isNil = false

    init(storage: EncodingStorage, slot: Int, codingPath: [any CodingKey]) {
        self.storage = storage
        self.slot = slot
        self.codingPath = codingPath
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        KeyedEncodingContainer(KeyedEncoder<Key>(storage: storage, slot: slot, codingPath: codingPath))
    }
    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        UnkeyedEncoder(storage: storage, slot: slot, codingPath: codingPath)
    }
    func singleValueContainer() -> any SingleValueEncodingContainer { SingleEncoder(encoder: self) }
}

struct KeyedEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let storage: EncodingStorage
    let slot: Int
    let codingPath: [any CodingKey]

    mutating func encodeNil(forKey key: Key) throws {
        try storage.appendKey(key)
        storage.encodeNilValue()
        storage.closeSlot(slot)
    }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try storage.appendKey(key)
        try storage.encodeValue(value, codingPath: codingPath + [key])
        storage.closeSlot(slot)
    }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        try? storage.appendKey(key)
        let child = storage.bytes.count
        storage.bytes.appendLE(UInt32(0))
        storage.closeSlot(slot)
        return KeyedEncodingContainer(NestedKeyedEncoder<NestedKey>(inner: KeyedEncoder<NestedKey>(storage: storage, slot: child, codingPath: codingPath + [key]), parent: slot))
    }
    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        try? storage.appendKey(key)
        let child = storage.bytes.count
        storage.bytes.appendLE(UInt32(0))
        storage.closeSlot(slot)
        return UnkeyedEncoder(storage: storage, slot: child, codingPath: codingPath + [key], parents: [slot])
    }
    mutating func superEncoder() -> any Encoder { superEncoder(forKey: Key(stringValue: "super")!) }
    mutating func superEncoder(forKey key: Key) -> any Encoder {
        try? storage.appendKey(key)
        let child = storage.bytes.count
        storage.bytes.appendLE(UInt32(0))
        storage.closeSlot(slot)
        return BinaryEncoderImpl(storage: storage, slot: child, codingPath: codingPath + [key])
    }
}

/// A keyed container nested inside another: every write also refreshes the parent's length.
struct NestedKeyedEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    var inner: KeyedEncoder<Key>
    let parent: Int
    var codingPath: [any CodingKey] { inner.codingPath }
    mutating func encodeNil(forKey key: Key) throws {
        try inner.encodeNil(forKey: key)
        inner.storage.closeSlot(parent)
    }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try inner.encode(value, forKey: key)
        inner.storage.closeSlot(parent)
    }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        inner.nestedContainer(keyedBy: keyType, forKey: key)
    }
    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer { inner.nestedUnkeyedContainer(forKey: key) }
    mutating func superEncoder() -> any Encoder { inner.superEncoder() }
    mutating func superEncoder(forKey key: Key) -> any Encoder { inner.superEncoder(forKey: key) }
}

struct UnkeyedEncoder: UnkeyedEncodingContainer {
    let storage: EncodingStorage
    let slot: Int
    let codingPath: [any CodingKey]
    var parents: [Int] = []
    var count = 0

    private func close() {
        storage.closeSlot(slot)
        for p in parents { storage.closeSlot(p) }
    }
    mutating func encodeNil() throws {
        storage.encodeNilValue()
        count += 1
        close()
    }
    mutating func encode<T: Encodable>(_ value: T) throws {
        try storage.encodeValue(value, codingPath: codingPath)
        count += 1
        close()
    }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        let child = storage.bytes.count
        storage.bytes.appendLE(UInt32(0))
        count += 1
        close()
        return KeyedEncodingContainer(NestedKeyedEncoder<NestedKey>(inner: KeyedEncoder<NestedKey>(storage: storage, slot: child, codingPath: codingPath), parent: slot))
    }
    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let child = storage.bytes.count
        storage.bytes.appendLE(UInt32(0))
        count += 1
        close()
        return UnkeyedEncoder(storage: storage, slot: child, codingPath: codingPath, parents: [slot] + parents)
    }
    mutating func superEncoder() -> any Encoder {
        let child = storage.bytes.count
        storage.bytes.appendLE(UInt32(0))
        count += 1
        close()
        return BinaryEncoderImpl(storage: storage, slot: child, codingPath: codingPath)
    }
}

struct SingleEncoder: SingleValueEncodingContainer {
    let encoder: BinaryEncoderImpl
    var codingPath: [any CodingKey] { encoder.codingPath }

    mutating func encodeNil() throws {
        encoder.storage.bytes.storeLE(BinaryEncoding.nilMarker, at: encoder.slot)
        encoder.isNil = true
    }
    mutating func encode<T: Encodable>(_ value: T) throws {
        if try !encoder.storage.encodePrimitive(value) {
            try value.encode(to: encoder)
        }
    }
}

// MARK: - Decoding

final class DecodingInput {
    let bytes: [UInt8]
    init(bytes: [UInt8]) { self.bytes = bytes }

    /// Reads the length slot at `offset`; nil for a nil value. The region is checked against `end`.
    func valueRegion(at offset: Int, end: Int, codingPath: [any CodingKey]) throws -> Range<Int>? {
        guard end - offset >= 4 else { throw corrupt("a value's length is cut off", codingPath) }
        let length = bytes.withUnsafeBytes { $0.loadLE(UInt32.self, at: offset) }
        if length == BinaryEncoding.nilMarker { return nil }
        guard Int(length) <= end - offset - 4 else {
            throw corrupt("a value claims \(length) bytes but only \(end - offset - 4) remain", codingPath)
        }
        return (offset + 4)..<(offset + 4 + Int(length))
    }

    func corrupt(_ what: String, _ codingPath: [any CodingKey]) -> DecodingError {
        DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: what))
    }

    func decodeValue<T: Decodable>(_ type: T.Type, region: Range<Int>, codingPath: [any CodingKey]) throws -> T {
        if let value = try decodePrimitive(type, region: region, codingPath: codingPath) { return value }
        return try T(from: BinaryDecoderImpl(input: self, region: region, codingPath: codingPath))
    }

    @inline(__always)
    func fixed<I: FixedWidthInteger>(_: I.Type, _ region: Range<Int>, _ codingPath: [any CodingKey]) throws -> I {
        guard region.count == MemoryLayout<I>.size else {
            throw corrupt("expected \(MemoryLayout<I>.size) bytes for \(I.self), found \(region.count)", codingPath)
        }
        return bytes.withUnsafeBytes { $0.loadLE(I.self, at: region.lowerBound) }
    }

    func decodePrimitive<T>(_ type: T.Type, region: Range<Int>, codingPath: [any CodingKey]) throws -> T? {
        guard let kind = PrimitiveKind.of(T.self) else { return nil }
        let value: Any
        switch kind {
        case .string:
            guard let s = String(validating: bytes[region], as: UTF8.self) else { throw corrupt("a string is not valid UTF-8", codingPath) }
            value = s
        case .bytes: value = Array(bytes[region])
        case .data: value = Data(bytes[region])
        case .int: value = Int(try fixed(Int64.self, region, codingPath))
        case .uint: value = UInt(try fixed(UInt64.self, region, codingPath))
        case .int64: value = try fixed(Int64.self, region, codingPath)
        case .uint64: value = try fixed(UInt64.self, region, codingPath)
        case .int32: value = try fixed(Int32.self, region, codingPath)
        case .uint32: value = try fixed(UInt32.self, region, codingPath)
        case .int16: value = try fixed(Int16.self, region, codingPath)
        case .uint16: value = try fixed(UInt16.self, region, codingPath)
        case .int8: value = try fixed(Int8.self, region, codingPath)
        case .uint8: value = try fixed(UInt8.self, region, codingPath)
        case .bool:
            let b = try fixed(UInt8.self, region, codingPath)
            guard b <= 1 else { throw corrupt("a Bool is \(b), not 0 or 1", codingPath) }
            value = b == 1
        case .double: value = Double(bitPattern: try fixed(UInt64.self, region, codingPath))
        case .float: value = Float(bitPattern: try fixed(UInt32.self, region, codingPath))
        }
        return (value as! T)
    }
}

final class BinaryDecoderImpl: Decoder {
    let input: DecodingInput
    let region: Range<Int>
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(input: DecodingInput, region: Range<Int>, codingPath: [any CodingKey]) {
        self.input = input
        self.region = region
        self.codingPath = codingPath
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        KeyedDecodingContainer(try KeyedDecoder<Key>(input: input, region: region, codingPath: codingPath))
    }
    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        UnkeyedDecoder(input: input, region: region, codingPath: codingPath)
    }
    func singleValueContainer() throws -> any SingleValueDecodingContainer { SingleDecoder(decoder: self) }
}

struct KeyedDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let input: DecodingInput
    let codingPath: [any CodingKey]
    /// (key bytes, value region or nil for nil), in stream order.
    let entries: [(key: Range<Int>, value: Range<Int>?)]

    init(input: DecodingInput, region: Range<Int>, codingPath: [any CodingKey]) throws {
        self.input = input
        self.codingPath = codingPath
        var entries: [(key: Range<Int>, value: Range<Int>?)] = []
        var offset = region.lowerBound
        while offset < region.upperBound {
            let keyLength = Int(input.bytes[offset])
            guard region.upperBound - offset - 1 >= keyLength else { throw input.corrupt("a key is cut off", codingPath) }
            let key = (offset + 1)..<(offset + 1 + keyLength)
            let value = try input.valueRegion(at: key.upperBound, end: region.upperBound, codingPath: codingPath)
            entries.append((key, value))
            offset = value?.upperBound ?? (key.upperBound + 4)
        }
        self.entries = entries
    }

    var allKeys: [Key] {
        entries.compactMap { Key(stringValue: String(decoding: input.bytes[$0.key], as: UTF8.self)) }
    }

    private func find(_ key: Key) -> (key: Range<Int>, value: Range<Int>?)? {
        let wanted = key.stringValue.utf8
        return entries.first { input.bytes[$0.key].elementsEqual(wanted) }
    }

    func contains(_ key: Key) -> Bool { find(key) != nil }

    private func region(_ key: Key) throws -> Range<Int>? {
        guard let entry = find(key) else {
            throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "no value for key '\(key.stringValue)'"))
        }
        return entry.value
    }

    func decodeNil(forKey key: Key) throws -> Bool { try region(key) == nil }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        guard let r = try region(key) else {
            if let optional = T.self as? any _OptionalType.Type { return optional.makeNil() as! T }
            throw DecodingError.valueNotFound(T.self, .init(codingPath: codingPath + [key], debugDescription: "value is nil"))
        }
        return try input.decodeValue(T.self, region: r, codingPath: codingPath + [key])
    }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        guard let r = try region(key) else { throw input.corrupt("nested container is nil", codingPath + [key]) }
        return KeyedDecodingContainer(try KeyedDecoder<NestedKey>(input: input, region: r, codingPath: codingPath + [key]))
    }
    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        guard let r = try region(key) else { throw input.corrupt("nested container is nil", codingPath + [key]) }
        return UnkeyedDecoder(input: input, region: r, codingPath: codingPath + [key])
    }
    func superDecoder() throws -> any Decoder { try superDecoder(forKey: Key(stringValue: "super")!) }
    func superDecoder(forKey key: Key) throws -> any Decoder {
        guard let r = try region(key) else { throw input.corrupt("super value is nil", codingPath + [key]) }
        return BinaryDecoderImpl(input: input, region: r, codingPath: codingPath + [key])
    }
}

struct UnkeyedDecoder: UnkeyedDecodingContainer {
    let input: DecodingInput
    let region: Range<Int>
    let codingPath: [any CodingKey]
    var offset: Int
    var currentIndex = 0
    var count: Int? { nil }
    var isAtEnd: Bool { offset >= region.upperBound }

    init(input: DecodingInput, region: Range<Int>, codingPath: [any CodingKey]) {
        self.input = input
        self.region = region
        self.codingPath = codingPath
        self.offset = region.lowerBound
    }

    private mutating func next() throws -> Range<Int>? {
        guard !isAtEnd else { throw input.corrupt("no more elements (read \(currentIndex))", codingPath) }
        let r = try input.valueRegion(at: offset, end: region.upperBound, codingPath: codingPath)
        offset = r?.upperBound ?? offset + 4
        currentIndex += 1
        return r
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd else { throw input.corrupt("no more elements", codingPath) }
        let length = input.bytes.withUnsafeBytes { $0.loadLE(UInt32.self, at: offset) }
        if length == BinaryEncoding.nilMarker {
            offset += 4
            currentIndex += 1
            return true
        }
        return false
    }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        guard let r = try next() else {
            if let optional = T.self as? any _OptionalType.Type { return optional.makeNil() as! T }
            throw DecodingError.valueNotFound(T.self, .init(codingPath: codingPath, debugDescription: "element \(currentIndex - 1) is nil"))
        }
        return try input.decodeValue(T.self, region: r, codingPath: codingPath)
    }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        guard let r = try next() else { throw input.corrupt("nested container is nil", codingPath) }
        return KeyedDecodingContainer(try KeyedDecoder<NestedKey>(input: input, region: r, codingPath: codingPath))
    }
    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard let r = try next() else { throw input.corrupt("nested container is nil", codingPath) }
        return UnkeyedDecoder(input: input, region: r, codingPath: codingPath)
    }
    mutating func superDecoder() throws -> any Decoder {
        guard let r = try next() else { throw input.corrupt("super value is nil", codingPath) }
        return BinaryDecoderImpl(input: input, region: r, codingPath: codingPath)
    }
}

struct SingleDecoder: SingleValueDecodingContainer {
    let decoder: BinaryDecoderImpl
    var codingPath: [any CodingKey] { decoder.codingPath }
    // A nil single value never reaches a decoder: its slot holds the nil marker and the parent sees nil.
    func decodeNil() -> Bool { false }
    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try decoder.input.decodeValue(T.self, region: decoder.region, codingPath: decoder.codingPath)
    }
}
