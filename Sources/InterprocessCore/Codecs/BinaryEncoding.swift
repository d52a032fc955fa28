// The compact binary Codable format. Layout (docs/wire-protocol.md, "Binary codec"):
//   value    := u32 length (0xFFFF_FFFF for nil) + region
//   region   := primitive bytes | keyed entries | unkeyed elements
//   keyed    := (u8 key length + key UTF-8 + value)*      unkeyed := value*
//   primitives: fixed-width little-endian integers and IEEE floats, Bool as one byte, String as UTF-8,
//   [UInt8] and Data as their bytes.
// A message is one value. Every length read is checked against the enclosing region.
import Foundation
import Synchronization

/// Errors of the binary codec, wrapped into ``IPCError`` by ``BinaryCodec``.
package struct BinaryCodingError: Error, CustomStringConvertible {
    package var description: String
}

package enum BinaryEncoding {
    static let nilMarker = UInt32.max

    package static func encode<T: Encodable>(_ value: T, into buffer: inout [UInt8], reusing scratch: BinaryCodingScratch? = nil) throws {
        let storage = scratch?.takeEncoder() ?? EncodingStorage()
        swap(&storage.bytes, &buffer)
        defer {
            swap(&storage.bytes, &buffer)
            if scratch?.put(storage) != true { storage.kept.removeAll() }
        }
        try storage.encodeValue(value, path: .root)
    }

    package static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8], reusing scratch: BinaryCodingScratch? = nil) throws -> T {
        let input = scratch?.takeDecoder() ?? DecodingInput()
        defer {
            if scratch?.put(input) != true { input.kept.removeAll() }
        }
        return try bytes.withUnsafeBytes { raw in
            input.bytes = raw
            defer { input.bytes = UnsafeRawBufferPointer(start: nil, count: 0) }
            guard let region = try input.valueRegion(at: 0, end: raw.count, path: .root) else {
                if let optional = T.self as? any _OptionalType.Type { return optional.makeNil() as! T }
                throw BinaryCodingError(description: "the message is nil but \(T.self) is not optional")
            }
            guard region.upperBound == raw.count else {
                throw BinaryCodingError(description: "\(raw.count - region.upperBound) trailing bytes after the value")
            }
            return try input.decodeValue(T.self, region: region, path: .root)
        }
    }
}

package protocol _OptionalType { static func makeNil() -> Self }
extension Optional: _OptionalType { package static func makeNil() -> Self { nil } }

// MARK: - Coding paths

/// A coding path, turned into an array only when asked for (an error, or a type reading `codingPath`), so that
/// coding a field allocates nothing for its path.
indirect enum CodingPath {
    case root
    case key(any CodingKey, CodingPath)

    var keys: [any CodingKey] {
        var keys: [any CodingKey] = []
        var node = self
        while case .key(let key, let parent) = node {
            keys.append(key)
            node = parent
        }
        return keys.reversed()
    }
}

// MARK: - Reusing containers

/// What a codec keeps between messages: one encoder's and one decoder's state, with the keyed containers they
/// handed out. Making a keyed container costs three lookups in the runtime's generic metadata caches (the
/// container for its key type, its conformance, the standard library's box around it) and an allocation: a
/// fifth of coding a small struct. A container kept from an earlier message is found by its key type and handed
/// out again with its position updated.
///
/// A kept container refers to its encoder or decoder, which keeps it: a reference cycle, broken by emptying
/// `kept` whenever an encoder or decoder is let go (by `deinit` here, and by ``BinaryEncoding`` when there is
/// no scratch or it holds another already).
package final class BinaryCodingScratch: Sendable {
    /// Each slot holds a +1 reference or nothing: taken with one atomic exchange, put back with one
    /// compare-and-exchange (a lock would take two atomic operations for each).
    private let encoder = Atomic<Unmanaged<EncodingStorage>?>(nil)
    private let decoder = Atomic<Unmanaged<DecodingInput>?>(nil)
    package init() {}

    deinit {
        if let storage = encoder.exchange(nil, ordering: .acquiring) { storage.takeRetainedValue().kept.removeAll() }
        if let input = decoder.exchange(nil, ordering: .acquiring) { input.takeRetainedValue().kept.removeAll() }
    }

    func takeEncoder() -> EncodingStorage? { encoder.exchange(nil, ordering: .acquiring)?.takeRetainedValue() }
    /// Keeps `storage` for the next encode; false if another is kept already.
    func put(_ storage: EncodingStorage) -> Bool { Self.put(storage, in: encoder) }
    func takeDecoder() -> DecodingInput? { decoder.exchange(nil, ordering: .acquiring)?.takeRetainedValue() }
    /// Keeps `input` for the next decode; false if another is kept already.
    func put(_ input: DecodingInput) -> Bool { Self.put(input, in: decoder) }

    private static func put<T: AnyObject>(_ object: T, in slot: borrowing Atomic<Unmanaged<T>?>) -> Bool {
        let reference = Unmanaged.passRetained(object)
        guard slot.compareExchange(expected: nil, desired: reference, ordering: .releasing).exchanged else {
            reference.release()
            return false
        }
        return true
    }
}

/// Where a keyed container reads or writes, changed when the container is handed out again: an encoder's
/// container writes after the length slot at `start`; a decoder's reads the entries in `start..<end`. The
/// container holds only its frame (one reference: the standard library's box copies the container, with a
/// retain per reference, on every call), and the frame its encoder or decoder.
///
/// Its fields skip the dynamic exclusivity check: one coder uses a frame at a time, from one thread.
class KeyedFrame {
    @exclusivity(unchecked) var start: Int
    @exclusivity(unchecked) var end: Int
    @exclusivity(unchecked) var path: CodingPath
    /// When the container was handed out (see ``KeptContainers``), -1 while it is free.
    @exclusivity(unchecked) var owner: Int
    /// A decoder's entry to look at first for the next key (see ``KeyedDecoder``): always where an entry begins.
    @exclusivity(unchecked) var next: Int

    init(start: Int, end: Int, path: CodingPath, owner: Int) {
        self.start = start
        self.end = end
        self.path = path
        self.owner = owner
        self.next = start
    }

    func take(start: Int, end: Int, path: CodingPath, owner: Int) {
        self.start = start
        self.end = end
        self.path = path
        self.owner = owner
        self.next = start
    }
}

final class EncoderFrame: KeyedFrame {
    let storage: EncodingStorage
    init(_ storage: EncodingStorage, slot: Int, path: CodingPath, owner: Int) {
        self.storage = storage
        super.init(start: slot, end: slot, path: path, owner: owner)
    }
}

final class DecoderFrame: KeyedFrame {
    let input: DecodingInput
    init(_ input: DecodingInput, region: Range<Int>, path: CodingPath, owner: Int) {
        self.input = input
        super.init(start: region.lowerBound, end: region.upperBound, path: path, owner: owner)
    }
}

/// The kept containers of one encoder or decoder: at most 16 (one per key type in use, for most values).
///
/// A container is the caller's until the value whose `encode(to:)` or `init(from:)` asked for it is done. The
/// values being coded nest in time (a value's coding begins and ends inside its parent's), so each container is
/// stamped with when it was handed out, and a value that is done frees every container handed out since its
/// coding began: its own and its descendants', never its parent's (handed out before it began), wherever they
/// lie in the message (a decoder may read a nested value that lies after the one it reads next).
struct KeptContainers {
    private var entries: [KeptContainer] = []
    /// How many containers were handed out: the stamp of the next one.
    private(set) var handedOut = 0

    /// A free kept container for `Key`, stamped as handed out now.
    @inline(__always)
    mutating func take<Key: CodingKey>(_: Key.Type, start: Int, end: Int, path: CodingPath) -> KeptContainer? {
        let keyType = ObjectIdentifier(Key.self)
        for entry in entries where entry.keyType == keyType && entry.frame.owner < 0 {
            entry.frame.take(start: start, end: end, path: path, owner: stamp())
            return entry
        }
        return nil
    }

    /// The stamp of a container handed out now.
    mutating func stamp() -> Int {
        handedOut += 1
        return handedOut - 1
    }

    mutating func keep(_ entry: @autoclosure () -> KeptContainer) {
        if entries.count < 16 { entries.append(entry()) }
    }

    mutating func removeAll() { entries.removeAll() }

    /// Frees the containers handed out since `mark` (the value of ``handedOut`` when a value's coding began).
    func release(since mark: Int) {
        for entry in entries where entry.frame.owner >= mark { entry.frame.owner = -1 }
    }
}

/// A kept keyed container: its key type and frame here, the container itself in the generic subclass.
class KeptContainer {
    let keyType: ObjectIdentifier
    let frame: KeyedFrame
    init(keyType: ObjectIdentifier, frame: KeyedFrame) {
        self.keyType = keyType
        self.frame = frame
    }
}

final class KeptEncodingContainer<Key: CodingKey>: KeptContainer {
    let container: KeyedEncodingContainer<Key>
    init(_ container: KeyedEncodingContainer<Key>, frame: KeyedFrame) {
        self.container = container
        super.init(keyType: ObjectIdentifier(Key.self), frame: frame)
    }
}

final class KeptDecodingContainer<Key: CodingKey>: KeptContainer {
    let container: KeyedDecodingContainer<Key>
    init(_ container: KeyedDecodingContainer<Key>, frame: KeyedFrame) {
        self.container = container
        super.init(keyType: ObjectIdentifier(Key.self), frame: frame)
    }
}

// MARK: - Encoding

/// `@unchecked Sendable`: one encode uses it at a time; between encodes a codec's ``BinaryCodingScratch`` may
/// hold it, handed over with acquire and release orderings.
final class EncodingStorage: @unchecked Sendable {
    /// Only one encoder writes at a time (the containers of one value, in turn), so the dynamic exclusivity
    /// check on each access (a noticeable share of a typed send) buys nothing here.
    @exclusivity(unchecked) var bytes: [UInt8] = []
    /// Keyed containers handed out before, to hand out again (see ``BinaryCodingScratch``).
    @exclusivity(unchecked) var kept = KeptContainers()

    /// A keyed container writing the value at `slot`: a free kept one for this key type, or a new one.
    func keyedContainer<Key: CodingKey>(_: Key.Type, slot: Int, path: CodingPath) -> KeyedEncodingContainer<Key> {
        if let entry = kept.take(Key.self, start: slot, end: slot, path: path) {
            // The entry was made for this key type (`take` checked), so this is the subclass for `Key`.
            return unsafeDowncast(entry, to: KeptEncodingContainer<Key>.self).container
        }
        let frame = EncoderFrame(self, slot: slot, path: path, owner: kept.stamp())
        let container = KeyedEncodingContainer(KeyedEncoder<Key>(frame: frame))
        kept.keep(KeptEncodingContainer(container, frame: frame))
        return container
    }

    /// Appends a length slot, encodes the value's region after it, then fills the slot.
    func encodeValue<T: Encodable>(_ value: T, path: @autoclosure () -> CodingPath) throws {
        let slot = bytes.count
        bytes.appendLE(UInt32(0))
        if try !encodePrimitive(value) {
            let mark = kept.handedOut
            defer { kept.release(since: mark) }
            try value.encode(to: BinaryEncoderImpl(storage: self, slot: slot, path: path()))
            // A single-value container's encodeNil put the nil marker in the slot (a length slot holds 0 until
            // it is closed, so the marker comes from nowhere else): keep it.
            if bytes.withUnsafeBytes({ $0.loadLE(UInt32.self, at: slot) }) == BinaryEncoding.nilMarker { return }
        }
        closeSlot(slot)
    }

    func encodeNilValue() { bytes.appendLE(BinaryEncoding.nilMarker) }

    func closeSlot(_ slot: Int) {
        let length = bytes.count - slot - 4
        bytes.storeLE(UInt32(truncatingIfNeeded: length), at: slot)
    }

    /// A fixed-width value with its length slot.
    @inline(__always)
    func appendFixedValue<I: FixedWidthInteger>(_ value: I) {
        bytes.appendLE(UInt32(MemoryLayout<I>.size))
        bytes.appendLE(value)
    }

    /// A string value with its length slot.
    func appendStringValue(_ value: String) {
        let slot = bytes.count
        bytes.appendLE(UInt32(0))
        bytes.append(contentsOf: value.utf8)
        closeSlot(slot)
    }

    /// Fast paths for types whose region is their raw bytes. Returns false for anything else.
    @inline(__always)
    func encodePrimitive<T>(_ value: T) throws -> Bool {
        guard let kind = PrimitiveKind.of(T.self) else { return false }
        // `kind` names T exactly, so the bit casts below are between identical types (no dynamic cast).
        switch kind {
        case .string: bytes.append(contentsOf: unsafeBitCast(value, to: String.self).utf8)
        case .bytes: bytes.append(contentsOf: unsafeBitCast(value, to: [UInt8].self))
        case .data: bytes.append(contentsOf: unsafeBitCast(value, to: Data.self))
        case .int: bytes.appendLE(Int64(unsafeBitCast(value, to: Int.self)))
        case .uint: bytes.appendLE(UInt64(unsafeBitCast(value, to: UInt.self)))
        case .int64: bytes.appendLE(unsafeBitCast(value, to: Int64.self))
        case .uint64: bytes.appendLE(unsafeBitCast(value, to: UInt64.self))
        case .int32: bytes.appendLE(unsafeBitCast(value, to: Int32.self))
        case .uint32: bytes.appendLE(unsafeBitCast(value, to: UInt32.self))
        case .int16: bytes.appendLE(unsafeBitCast(value, to: Int16.self))
        case .uint16: bytes.appendLE(unsafeBitCast(value, to: UInt16.self))
        case .int8: bytes.append(UInt8(bitPattern: unsafeBitCast(value, to: Int8.self)))
        case .uint8: bytes.append(unsafeBitCast(value, to: UInt8.self))
        case .bool: bytes.append(unsafeBitCast(value, to: Bool.self) ? 1 : 0)
        case .double: bytes.appendLE(unsafeBitCast(value, to: Double.self).bitPattern)
        case .float: bytes.appendLE(unsafeBitCast(value, to: Float.self).bitPattern)
        }
        return true
    }

    func appendKey(_ key: some CodingKey, path: @autoclosure () -> CodingPath) throws {
        var name = key.stringValue
        try name.withUTF8 { utf8 in
            guard utf8.count <= 255 else {
                throw EncodingError.invalidValue(key.stringValue, .init(codingPath: path().keys + [key], debugDescription: "keys longer than 255 bytes are not supported by the binary codec"))
            }
            bytes.append(UInt8(utf8.count))
            bytes.append(contentsOf: utf8)
        }
    }
}

/// The types the binary codec writes as raw bytes.
enum PrimitiveKind {
    case string, bytes, data, int, uint, int64, uint64, int32, uint32, int16, uint16, int8, uint8, bool, double, float

    /// A few pointer comparisons, most frequent first (cheaper than hashing the type for a dictionary).
    @inline(__always)
    static func of(_ type: Any.Type) -> PrimitiveKind? {
        switch ObjectIdentifier(type) {
        case ObjectIdentifier([UInt8].self): .bytes
        case ObjectIdentifier(String.self): .string
        case ObjectIdentifier(Int.self): .int
        case ObjectIdentifier(Double.self): .double
        case ObjectIdentifier(Bool.self): .bool
        case ObjectIdentifier(UInt64.self): .uint64
        case ObjectIdentifier(Int64.self): .int64
        case ObjectIdentifier(UInt8.self): .uint8
        case ObjectIdentifier(Data.self): .data
        case ObjectIdentifier(UInt.self): .uint
        case ObjectIdentifier(Int32.self): .int32
        case ObjectIdentifier(UInt32.self): .uint32
        case ObjectIdentifier(Int16.self): .int16
        case ObjectIdentifier(UInt16.self): .uint16
        case ObjectIdentifier(Int8.self): .int8
        case ObjectIdentifier(Float.self): .float
        default: nil
        }
    }
}

/// Three words, so it is stored inline in the `any Encoder` a value's `encode(to:)` receives rather than
/// allocated per value.
struct BinaryEncoderImpl: Encoder {
    let storage: EncodingStorage
    /// The length slot of the value this encoder writes.
    let slot: Int
    let path: CodingPath
    var codingPath: [any CodingKey] { path.keys }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(storage: EncodingStorage, slot: Int, path: CodingPath) {
        self.storage = storage
        self.slot = slot
        self.path = path
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        storage.keyedContainer(Key.self, slot: slot, path: path)
    }
    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        UnkeyedEncoder(storage: storage, slot: slot, path: path)
    }
    func singleValueContainer() -> any SingleValueEncodingContainer { SingleEncoder(encoder: self) }
}

struct KeyedEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    /// The frame refers to the storage strongly, though the storage may keep this container (see
    /// ``BinaryCodingScratch`` for how that cycle is broken): an unowned reference would save nothing, as the
    /// compiler makes a strong copy of it for each call on the storage.
    let frame: EncoderFrame
    var storage: EncodingStorage { frame.storage }
    var slot: Int { frame.start }
    var path: CodingPath { frame.path }
    var codingPath: [any CodingKey] { path.keys }

    init(frame: EncoderFrame) {
        self.frame = frame
    }

    /// A container that is not kept (a nested one): its stamp is never looked at.
    init(storage: EncodingStorage, slot: Int, path: CodingPath) {
        self.init(frame: EncoderFrame(storage, slot: slot, path: path, owner: -1))
    }

    /// Runs `body` with the frame and storage borrowed: called directly in these `mutating` methods, each call
    /// on the storage retained and released it.
    @inline(__always)
    private func withFrame<R>(_ body: (EncoderFrame, EncodingStorage) throws -> R) rethrows -> R {
        try Unmanaged.passUnretained(frame)._withUnsafeGuaranteedRef { frame in try body(frame, frame.storage) }
    }

    mutating func encodeNil(forKey key: Key) throws {
        try withFrame { frame, storage in
            try storage.appendKey(key, path: frame.path)
            storage.encodeNilValue()
            storage.closeSlot(frame.start)
        }
    }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try withFrame { frame, storage in
            try storage.appendKey(key, path: frame.path)
            try storage.encodeValue(value, path: .key(key, frame.path))
            storage.closeSlot(frame.start)
        }
    }

    // The primitives written directly: the same bytes as the generic path, without its type check. Inlined into
    // each overload, so the integer type is concrete there (this container is generic over its key, and a call
    // generic in both would run unspecialized, looking up metadata for each field).
    @inline(__always)
    private func fixed<I: FixedWidthInteger>(_ value: I, _ key: Key) throws {
        try withFrame { frame, storage in
            try storage.appendKey(key, path: frame.path)
            storage.appendFixedValue(value)
            storage.closeSlot(frame.start)
        }
    }
    mutating func encode(_ value: Bool, forKey key: Key) throws { try fixed(UInt8(value ? 1 : 0), key) }
    mutating func encode(_ value: String, forKey key: Key) throws {
        try withFrame { frame, storage in
            try storage.appendKey(key, path: frame.path)
            storage.appendStringValue(value)
            storage.closeSlot(frame.start)
        }
    }
    mutating func encode(_ value: Double, forKey key: Key) throws { try fixed(value.bitPattern, key) }
    mutating func encode(_ value: Float, forKey key: Key) throws { try fixed(value.bitPattern, key) }
    mutating func encode(_ value: Int, forKey key: Key) throws { try fixed(Int64(value), key) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { try fixed(value, key) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { try fixed(value, key) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { try fixed(value, key) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { try fixed(value, key) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { try fixed(UInt64(value), key) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { try fixed(value, key) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { try fixed(value, key) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { try fixed(value, key) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { try fixed(value, key) }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        try? storage.appendKey(key, path: path)
        let child = storage.bytes.count
        storage.bytes.appendLE(UInt32(0))
        storage.closeSlot(slot)
        return KeyedEncodingContainer(NestedKeyedEncoder<NestedKey>(inner: KeyedEncoder<NestedKey>(storage: storage, slot: child, path: .key(key, path)), parent: slot))
    }
    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        try? storage.appendKey(key, path: path)
        let child = storage.bytes.count
        storage.bytes.appendLE(UInt32(0))
        storage.closeSlot(slot)
        return UnkeyedEncoder(storage: storage, slot: child, path: .key(key, path), parents: [slot])
    }
    mutating func superEncoder() -> any Encoder { superEncoder(forKey: Key(stringValue: "super")!) }
    mutating func superEncoder(forKey key: Key) -> any Encoder {
        try? storage.appendKey(key, path: path)
        let child = storage.bytes.count
        storage.bytes.appendLE(UInt32(0))
        storage.closeSlot(slot)
        return BinaryEncoderImpl(storage: storage, slot: child, path: .key(key, path))
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
    let path: CodingPath
    var parents: [Int] = []
    var count = 0
    var codingPath: [any CodingKey] { path.keys }

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
        try storage.encodeValue(value, path: path)
        count += 1
        close()
    }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        let child = storage.bytes.count
        storage.bytes.appendLE(UInt32(0))
        count += 1
        close()
        return KeyedEncodingContainer(NestedKeyedEncoder<NestedKey>(inner: KeyedEncoder<NestedKey>(storage: storage, slot: child, path: path), parent: slot))
    }
    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let child = storage.bytes.count
        storage.bytes.appendLE(UInt32(0))
        count += 1
        close()
        return UnkeyedEncoder(storage: storage, slot: child, path: path, parents: [slot] + parents)
    }
    mutating func superEncoder() -> any Encoder {
        let child = storage.bytes.count
        storage.bytes.appendLE(UInt32(0))
        count += 1
        close()
        return BinaryEncoderImpl(storage: storage, slot: child, path: path)
    }
}

struct SingleEncoder: SingleValueEncodingContainer {
    let encoder: BinaryEncoderImpl
    var codingPath: [any CodingKey] { encoder.codingPath }

    mutating func encodeNil() throws {
        encoder.storage.bytes.storeLE(BinaryEncoding.nilMarker, at: encoder.slot)
    }
    mutating func encode<T: Encodable>(_ value: T) throws {
        if try !encoder.storage.encodePrimitive(value) {
            try value.encode(to: encoder)
        }
    }
}

// MARK: - Decoding

/// The message being decoded, and the keyed containers kept for the next one (see ``BinaryCodingScratch``).
/// `@unchecked Sendable` for the reasons of ``EncodingStorage``.
final class DecodingInput: @unchecked Sendable {
    /// The message's bytes, during a decode only (``BinaryEncoding/decode(_:from:reusing:)`` sets it inside the
    /// array's `withUnsafeBytes`): a pointer, so reading it needs no reference count.
    @exclusivity(unchecked) var bytes = UnsafeRawBufferPointer(start: nil, count: 0)
    @exclusivity(unchecked) var kept = KeptContainers()

    /// A keyed container reading the entries in `region`, every entry checked first: a free kept one for this
    /// key type, or a new one.
    func keyedContainer<Key: CodingKey>(_: Key.Type, region: Range<Int>, path: CodingPath) throws -> KeyedDecodingContainer<Key> {
        try checkEntries(region, path: path)
        if let entry = kept.take(Key.self, start: region.lowerBound, end: region.upperBound, path: path) {
            // The entry was made for this key type (`take` checked), so this is the subclass for `Key`.
            return unsafeDowncast(entry, to: KeptDecodingContainer<Key>.self).container
        }
        let frame = DecoderFrame(self, region: region, path: path, owner: kept.stamp())
        let container = KeyedDecodingContainer(KeyedDecoder<Key>(frame: frame))
        kept.keep(KeptDecodingContainer(container, frame: frame))
        return container
    }

    /// Checks every entry of a keyed region, so that a corrupt region fails whatever the type reads; lookups
    /// then walk the checked entries (no table is built: a struct has few fields).
    private func checkEntries(_ region: Range<Int>, path: CodingPath) throws {
        var offset = region.lowerBound
        while offset < region.upperBound {
            let keyLength = Int(bytes[offset])
            guard region.upperBound - offset - 1 >= keyLength else { throw corrupt("a key is cut off", path) }
            let value = try valueRegion(at: offset + 1 + keyLength, end: region.upperBound, path: path)
            offset = value?.upperBound ?? (offset + 1 + keyLength + 4)
        }
    }

    /// Reads the length slot at `offset`; nil for a nil value. The region is checked against `end`.
    func valueRegion(at offset: Int, end: Int, path: @autoclosure () -> CodingPath) throws -> Range<Int>? {
        guard end - offset >= 4 else { throw corrupt("a value's length is cut off", path()) }
        let length = bytes.loadLE(UInt32.self, at: offset)
        if length == BinaryEncoding.nilMarker { return nil }
        guard Int(length) <= end - offset - 4 else {
            throw corrupt("a value claims \(length) bytes but only \(end - offset - 4) remain", path())
        }
        return (offset + 4)..<(offset + 4 + Int(length))
    }

    func corrupt(_ what: String, _ path: CodingPath) -> DecodingError {
        DecodingError.dataCorrupted(.init(codingPath: path.keys, debugDescription: what))
    }

    func decodeValue<T: Decodable>(_ type: T.Type, region: Range<Int>, path: @autoclosure () -> CodingPath) throws -> T {
        // No `T?` on the way: in this unspecialized code its metadata would be looked up on every value.
        if let kind = PrimitiveKind.of(T.self) { return try decodePrimitive(kind, T.self, region: region, path: path()) }
        let mark = kept.handedOut
        defer { kept.release(since: mark) }
        return try T(from: BinaryDecoderImpl(input: self, region: region, path: path()))
    }

    @inline(__always)
    func fixed<I: FixedWidthInteger>(_: I.Type, _ region: Range<Int>, _ path: @autoclosure () -> CodingPath) throws -> I {
        guard region.count == MemoryLayout<I>.size else {
            throw corrupt("expected \(MemoryLayout<I>.size) bytes for \(I.self), found \(region.count)", path())
        }
        return bytes.loadLE(I.self, at: region.lowerBound)
    }

    func bool(_ region: Range<Int>, _ path: @autoclosure () -> CodingPath) throws -> Bool {
        let b = try fixed(UInt8.self, region, path())
        guard b <= 1 else { throw corrupt("a Bool is \(b), not 0 or 1", path()) }
        return b == 1
    }

    func string(_ region: Range<Int>, _ path: @autoclosure () -> CodingPath) throws -> String {
        guard let s = String(validating: bytes[region], as: UTF8.self) else { throw corrupt("a string is not valid UTF-8", path()) }
        return s
    }

    func decodePrimitive<T>(_ kind: PrimitiveKind, _ type: T.Type, region: Range<Int>, path: @autoclosure () -> CodingPath) throws -> T {
        // `kind` names T exactly, so the bit casts below are between identical types (no boxing, no dynamic cast).
        switch kind {
        case .string: return unsafeBitCast(try string(region, path()), to: T.self)
        case .bytes: return unsafeBitCast([UInt8](UnsafeRawBufferPointer(rebasing: bytes[region])), to: T.self)
        case .data: return unsafeBitCast(Data(bytes[region]), to: T.self)
        case .int: return unsafeBitCast(Int(try fixed(Int64.self, region, path())), to: T.self)
        case .uint: return unsafeBitCast(UInt(try fixed(UInt64.self, region, path())), to: T.self)
        case .int64: return unsafeBitCast(try fixed(Int64.self, region, path()), to: T.self)
        case .uint64: return unsafeBitCast(try fixed(UInt64.self, region, path()), to: T.self)
        case .int32: return unsafeBitCast(try fixed(Int32.self, region, path()), to: T.self)
        case .uint32: return unsafeBitCast(try fixed(UInt32.self, region, path()), to: T.self)
        case .int16: return unsafeBitCast(try fixed(Int16.self, region, path()), to: T.self)
        case .uint16: return unsafeBitCast(try fixed(UInt16.self, region, path()), to: T.self)
        case .int8: return unsafeBitCast(try fixed(Int8.self, region, path()), to: T.self)
        case .uint8: return unsafeBitCast(try fixed(UInt8.self, region, path()), to: T.self)
        case .bool: return unsafeBitCast(try bool(region, path()), to: T.self)
        case .double: return unsafeBitCast(Double(bitPattern: try fixed(UInt64.self, region, path())), to: T.self)
        case .float: return unsafeBitCast(Float(bitPattern: try fixed(UInt32.self, region, path())), to: T.self)
        }
    }
}

/// Three words (the input, the region's bounds packed in one, the path): stored inline in the
/// `any Decoder` a value's `init(from:)` receives, rather than allocated per value.
struct BinaryDecoderImpl: Decoder {
    let input: DecodingInput
    /// The region's bounds: lower in the low 32 bits, upper in the high (a message is at most 4 GiB).
    private let bounds: UInt64
    let path: CodingPath
    var region: Range<Int> { Int(truncatingIfNeeded: bounds & 0xFFFF_FFFF)..<Int(truncatingIfNeeded: bounds >> 32) }
    var codingPath: [any CodingKey] { path.keys }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(input: DecodingInput, region: Range<Int>, path: CodingPath) {
        self.input = input
        self.bounds = UInt64(truncatingIfNeeded: region.lowerBound) | UInt64(truncatingIfNeeded: region.upperBound) << 32
        self.path = path
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        try input.keyedContainer(Key.self, region: region, path: path)
    }
    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        UnkeyedDecoder(input: input, region: region, path: path)
    }
    func singleValueContainer() throws -> any SingleValueDecodingContainer { SingleDecoder(decoder: self) }
}

struct KeyedDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    /// The frame refers to the input strongly, for the reasons of ``KeyedEncoder/frame``.
    let frame: DecoderFrame
    var input: DecodingInput { frame.input }
    var path: CodingPath { frame.path }
    var codingPath: [any CodingKey] { path.keys }
    /// The keyed entries, every one checked before the container was handed out: (u8 key length, key, value)*.
    var region: Range<Int> { frame.start..<frame.end }

    init(frame: DecoderFrame) {
        self.frame = frame
    }

    /// Calls `body` with the input's bytes and each entry's key and value region (nil for nil) until it returns
    /// true, from the entry at `first` to the last, then from the first entry to `first`. Returns where the
    /// entry after the one accepted begins, or nil when none was.
    @discardableResult
    private func walk(from first: Int, _ body: (_ bytes: UnsafeRawBufferPointer, _ key: Range<Int>, _ value: Range<Int>?) -> Bool) -> Int? {
        let bytes = input.bytes
        func scan(_ from: Int, _ to: Int) -> Int? {
            var offset = from
            while offset < to {
                let key = (offset + 1)..<(offset + 1 + Int(bytes[offset]))
                let length = bytes.loadLE(UInt32.self, at: key.upperBound)
                let value = length == BinaryEncoding.nilMarker ? nil : (key.upperBound + 4)..<(key.upperBound + 4 + Int(length))
                offset = value?.upperBound ?? (key.upperBound + 4)
                if body(bytes, key, value) { return offset }
            }
            return nil
        }
        return scan(first, region.upperBound) ?? scan(region.lowerBound, first)
    }

    var allKeys: [Key] {
        var keys: [Key] = []
        walk(from: region.lowerBound) { bytes, key, _ in
            if let k = Key(stringValue: String(decoding: bytes[key], as: UTF8.self)) { keys.append(k) }
            return false
        }
        return keys
    }

    /// Most types read their keys in the order they were written, so the search begins after the entry found
    /// last (`frame.next`): one comparison per key.
    private func find(_ key: Key) -> (key: Range<Int>, value: Range<Int>?)? {
        var name = key.stringValue
        return name.withUTF8 { wanted in
            var found: (key: Range<Int>, value: Range<Int>?)?
            let after = walk(from: frame.next) { bytes, k, v in
                guard k.count == wanted.count, wanted.isEmpty || memcmp(bytes.baseAddress! + k.lowerBound, wanted.baseAddress!, wanted.count) == 0 else { return false }
                found = (k, v)
                return true
            }
            if let after { frame.next = after }
            return found
        }
    }

    func contains(_ key: Key) -> Bool { find(key) != nil }

    private func region(_ key: Key) throws -> Range<Int>? {
        guard let entry = find(key) else {
            throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "no value for key '\(key.stringValue)'"))
        }
        return entry.value
    }

    /// The region of a value that must not be nil.
    private func present(_ key: Key, _ type: Any.Type) throws -> Range<Int> {
        guard let r = try region(key) else {
            throw DecodingError.valueNotFound(type, .init(codingPath: codingPath + [key], debugDescription: "value is nil"))
        }
        return r
    }

    func decodeNil(forKey key: Key) throws -> Bool { try region(key) == nil }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        guard let r = try region(key) else {
            if let optional = T.self as? any _OptionalType.Type { return optional.makeNil() as! T }
            throw DecodingError.valueNotFound(T.self, .init(codingPath: codingPath + [key], debugDescription: "value is nil"))
        }
        return try input.decodeValue(T.self, region: r, path: .key(key, path))
    }

    // The primitives read directly: the same checks as the generic path, without its type check. Inlined into
    // each overload, so the integer type is concrete there (see `KeyedEncoder.fixed`).
    @inline(__always)
    private func fixed<I: FixedWidthInteger>(_ type: I.Type, _ key: Key) throws -> I {
        try input.fixed(I.self, try present(key, I.self), .key(key, path))
    }
    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try input.bool(try present(key, type), .key(key, path)) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try input.string(try present(key, type), .key(key, path)) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { Double(bitPattern: try fixed(UInt64.self, key)) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { Float(bitPattern: try fixed(UInt32.self, key)) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { Int(try fixed(Int64.self, key)) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try fixed(Int8.self, key) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try fixed(Int16.self, key) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try fixed(Int32.self, key) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try fixed(Int64.self, key) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { UInt(try fixed(UInt64.self, key)) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try fixed(UInt8.self, key) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try fixed(UInt16.self, key) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try fixed(UInt32.self, key) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try fixed(UInt64.self, key) }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        guard let r = try region(key) else { throw input.corrupt("nested container is nil", .key(key, path)) }
        return try input.keyedContainer(NestedKey.self, region: r, path: .key(key, path))
    }
    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        guard let r = try region(key) else { throw input.corrupt("nested container is nil", .key(key, path)) }
        return UnkeyedDecoder(input: input, region: r, path: .key(key, path))
    }
    func superDecoder() throws -> any Decoder { try superDecoder(forKey: Key(stringValue: "super")!) }
    func superDecoder(forKey key: Key) throws -> any Decoder {
        guard let r = try region(key) else { throw input.corrupt("super value is nil", .key(key, path)) }
        return BinaryDecoderImpl(input: input, region: r, path: .key(key, path))
    }
}

struct UnkeyedDecoder: UnkeyedDecodingContainer {
    let input: DecodingInput
    let region: Range<Int>
    let path: CodingPath
    var codingPath: [any CodingKey] { path.keys }
    var offset: Int
    var currentIndex = 0
    var count: Int? { nil }
    var isAtEnd: Bool { offset >= region.upperBound }

    init(input: DecodingInput, region: Range<Int>, path: CodingPath) {
        self.input = input
        self.region = region
        self.path = path
        self.offset = region.lowerBound
    }

    private mutating func next() throws -> Range<Int>? {
        guard !isAtEnd else { throw input.corrupt("no more elements (read \(currentIndex))", path) }
        let r = try input.valueRegion(at: offset, end: region.upperBound, path: path)
        offset = r?.upperBound ?? offset + 4
        currentIndex += 1
        return r
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd else { throw input.corrupt("no more elements", path) }
        let length = input.bytes.loadLE(UInt32.self, at: offset)
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
        return try input.decodeValue(T.self, region: r, path: path)
    }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        guard let r = try next() else { throw input.corrupt("nested container is nil", path) }
        return try input.keyedContainer(NestedKey.self, region: r, path: path)
    }
    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard let r = try next() else { throw input.corrupt("nested container is nil", path) }
        return UnkeyedDecoder(input: input, region: r, path: path)
    }
    mutating func superDecoder() throws -> any Decoder {
        guard let r = try next() else { throw input.corrupt("super value is nil", path) }
        return BinaryDecoderImpl(input: input, region: r, path: path)
    }
}

struct SingleDecoder: SingleValueDecodingContainer {
    let decoder: BinaryDecoderImpl
    var codingPath: [any CodingKey] { decoder.codingPath }
    // A nil single value never reaches a decoder: its slot holds the nil marker and the parent sees nil.
    func decodeNil() -> Bool { false }
    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try decoder.input.decodeValue(T.self, region: decoder.region, path: decoder.path)
    }
}
