// The JSON codec's decoder: checks the whole document against the JSON grammar in one pass (so a malformed
// message fails whatever the type reads), then reads values where they lie as the type's `init(from:)` asks for
// them, without building a tree. It reads what Foundation's `JSONDecoder` reads with its default strategies:
// `Date` as seconds since 2001, `Data` as Base64, `URL` from a string, `Decimal` from a number, integers also
// from numbers written with a fraction or exponent when the value is whole and fits; when an object repeats a
// key, the first entry counts.
import Foundation

package enum JSONDecoding {
    /// How deeply arrays and objects may nest (Foundation's limit).
    static let maximumDepth = 512

    package static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        let input = JSONInput(bytes)
        let start = try input.validate()
        return try input.decodeValue(T.self, at: start, path: .root)
    }
}

private extension UInt8 {
    static let quote = UInt8(ascii: "\""), backslash = UInt8(ascii: "\\"), comma = UInt8(ascii: ","), colon = UInt8(ascii: ":")
    static let openBrace = UInt8(ascii: "{"), closeBrace = UInt8(ascii: "}"), openBracket = UInt8(ascii: "["), closeBracket = UInt8(ascii: "]")
    static let minus = UInt8(ascii: "-"), plus = UInt8(ascii: "+"), dot = UInt8(ascii: "."), zero = UInt8(ascii: "0"), nine = UInt8(ascii: "9")

    var isWhitespace: Bool { self == 0x20 || self == 0x0A || self == 0x0D || self == 0x09 }
    var isDigit: Bool { self &- .zero < 10 }
}

/// One message's bytes. The decoder and the containers it hands out keep it, and it keeps the array, so a
/// container a type holds on to stays valid.
final class JSONInput {
    private let storage: [UInt8]
    /// The array's bytes (stable while `storage` holds the array and nothing mutates it).
    let base: UnsafePointer<UInt8>
    let count: Int

    init(_ bytes: [UInt8]) {
        storage = bytes
        count = bytes.count
        base = bytes.withUnsafeBufferPointer { $0.baseAddress } ?? UnsafePointer(bitPattern: 1)!
    }

    // MARK: Checking the document

    /// Checks the document; returns where its value begins.
    func validate() throws -> Int {
        let start = skipWhitespace(0)
        let end = skipWhitespace(try validateValue(start, depth: 0))
        guard end == count else { throw corrupt("unexpected \(describeByte(end)) after the JSON value at offset \(end)") }
        return start
    }

    private func validateValue(_ i: Int, depth: Int) throws -> Int {
        guard i < count else { throw corrupt("the document ends where a value was expected (offset \(i))") }
        switch base[i] {
        case .openBrace:
            guard depth < JSONDecoding.maximumDepth else { throw corrupt("objects and arrays nest deeper than \(JSONDecoding.maximumDepth) at offset \(i)") }
            var j = skipWhitespace(i + 1)
            if j < count, base[j] == .closeBrace { return j + 1 }
            while true {
                guard j < count, base[j] == .quote else { throw corrupt("expected a key in quotes at offset \(j), found \(describeByte(j))") }
                j = skipWhitespace(try validateString(j))
                guard j < count, base[j] == .colon else { throw corrupt("expected ':' after a key at offset \(j), found \(describeByte(j))") }
                j = skipWhitespace(try validateValue(skipWhitespace(j + 1), depth: depth + 1))
                guard j < count else { throw corrupt("an object is not closed (the document ends at offset \(j))") }
                if base[j] == .closeBrace { return j + 1 }
                guard base[j] == .comma else { throw corrupt("expected ',' or '}' at offset \(j), found \(describeByte(j))") }
                j = skipWhitespace(j + 1)
            }
        case .openBracket:
            guard depth < JSONDecoding.maximumDepth else { throw corrupt("objects and arrays nest deeper than \(JSONDecoding.maximumDepth) at offset \(i)") }
            var j = skipWhitespace(i + 1)
            if j < count, base[j] == .closeBracket { return j + 1 }
            while true {
                j = skipWhitespace(try validateValue(j, depth: depth + 1))
                guard j < count else { throw corrupt("an array is not closed (the document ends at offset \(j))") }
                if base[j] == .closeBracket { return j + 1 }
                guard base[j] == .comma else { throw corrupt("expected ',' or ']' at offset \(j), found \(describeByte(j))") }
                j = skipWhitespace(j + 1)
            }
        case .quote:
            return try validateString(i)
        case UInt8(ascii: "t"): return try literal("true", at: i)
        case UInt8(ascii: "f"): return try literal("false", at: i)
        case UInt8(ascii: "n"): return try literal("null", at: i)
        case .minus, .zero ... .nine: return try validateNumber(i)
        default: throw corrupt("unexpected \(describeByte(i)) at offset \(i) where a value was expected")
        }
    }

    private func literal(_ word: StaticString, at i: Int) throws -> Int {
        let n = word.utf8CodeUnitCount
        guard count - i >= n, memcmp(base + i, word.utf8Start, n) == 0 else { throw corrupt("unexpected \(describeByte(i)) at offset \(i) where a value was expected") }
        return i + n
    }

    private func validateString(_ i: Int) throws -> Int {
        var j = i + 1
        while j < count {
            let b = base[j]
            if b == .quote { return j + 1 }
            if b == .backslash {
                guard j + 1 < count else { break }
                switch base[j + 1] {
                case .quote, .backslash, UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"), UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                    j += 2
                case UInt8(ascii: "u"):
                    guard count - j >= 6, (2..<6).allSatisfy({ hexValue(base[j + $0]) != nil }) else { throw corrupt("a \\u escape at offset \(j) is not four hexadecimal digits") }
                    j += 6
                default:
                    throw corrupt("invalid escape '\\\(Character(Unicode.Scalar(base[j + 1])))' in a string at offset \(j)")
                }
                continue
            }
            guard b >= 0x20 else { throw corrupt("an unescaped control character (0x\(String(b, radix: 16))) in a string at offset \(j)") }
            j += 1
        }
        throw corrupt("a string that begins at offset \(i) is not closed")
    }

    private func validateNumber(_ i: Int) throws -> Int {
        var j = i
        if base[j] == .minus { j += 1 }
        guard j < count, base[j].isDigit else { throw corrupt("a number at offset \(i) has no digits") }
        if base[j] == .zero {
            j += 1
        } else {
            while j < count, base[j].isDigit { j += 1 }
        }
        if j < count, base[j] == .dot {
            j += 1
            guard j < count, base[j].isDigit else { throw corrupt("a number at offset \(i) has no digits after its '.'") }
            while j < count, base[j].isDigit { j += 1 }
        }
        if j < count, base[j] | 0x20 == UInt8(ascii: "e") {
            j += 1
            if j < count, base[j] == .plus || base[j] == .minus { j += 1 }
            guard j < count, base[j].isDigit else { throw corrupt("a number at offset \(i) has no digits in its exponent") }
            while j < count, base[j].isDigit { j += 1 }
        }
        return j
    }

    // MARK: Walking the checked document (no bounds to check: every value is complete)

    @inline(__always)
    func skipWhitespace(_ i: Int) -> Int {
        var j = i
        while j < count, base[j].isWhitespace { j += 1 }
        return j
    }

    /// Where the string at `i` (its opening quote) ends: just after its closing quote.
    func skipString(_ i: Int) -> Int {
        var j = i + 1
        while true {
            let b = base[j]
            if b == .quote { return j + 1 }
            j += b == .backslash ? 2 : 1
        }
    }

    func skipValue(_ i: Int) -> Int {
        switch base[i] {
        case .quote: return skipString(i)
        case .openBrace, .openBracket:
            var depth = 0, j = i
            while true {
                let b = base[j]
                if b == .quote {
                    j = skipString(j)
                    continue
                }
                if b == .openBrace || b == .openBracket {
                    depth += 1
                } else if b == .closeBrace || b == .closeBracket {
                    depth -= 1
                    if depth == 0 { return j + 1 }
                }
                j += 1
            }
        case UInt8(ascii: "t"), UInt8(ascii: "n"): return i + 4
        case UInt8(ascii: "f"): return i + 5
        default:
            var j = i + 1
            while j < count, base[j].isDigit || base[j] == .dot || base[j] | 0x20 == UInt8(ascii: "e") || base[j] == .plus || base[j] == .minus { j += 1 }
            return j
        }
    }

    /// The value after the one at `i` in its array or object, or the position of the closing bracket.
    @inline(__always)
    func afterValue(_ i: Int) -> Int {
        let j = skipWhitespace(skipValue(i))
        return base[j] == .comma ? skipWhitespace(j + 1) : j
    }

    /// The object entry whose key begins at `i`: its key's bytes without the quotes, where its value begins, and
    /// where the next entry (or the closing brace) begins. Nil at the closing brace.
    @inline(__always)
    func entry(at i: Int) -> (key: Range<Int>, value: Int, next: Int)? {
        guard base[i] == .quote else { return nil }
        let keyEnd = skipString(i)
        let value = skipWhitespace(skipWhitespace(keyEnd) + 1)
        return (i + 1..<keyEnd - 1, value, afterValue(value))
    }

    // MARK: Reading values

    func decodeValue<T: Decodable>(_ type: T.Type, at i: Int, path: @autoclosure () -> CodingPath) throws -> T {
        if let kind = PrimitiveKind.of(T.self) { return try primitive(kind, T.self, at: i, path: path()) }
        switch ObjectIdentifier(T.self) {
        case ObjectIdentifier(URL.self):
            let text = try string(at: i, path())
            guard let url = URL(string: text) else { throw corrupt("'\(text)' is not a valid URL", path()) }
            return url as! T
        case ObjectIdentifier(Decimal.self):
            guard isNumber(i) else { throw mismatch(Decimal.self, at: i, path()) }
            guard let decimal = Decimal(string: String(decoding: UnsafeBufferPointer(start: base + i, count: skipValue(i) - i), as: UTF8.self)) else {
                throw corrupt("the number at offset \(i) is not representable as a Decimal", path())
            }
            return decimal as! T
        default:
            return try T(from: JSONDecoderImpl(input: self, at: i, path: path()))
        }
    }

    func primitive<T>(_ kind: PrimitiveKind, _ type: T.Type, at i: Int, path: @autoclosure () -> CodingPath) throws -> T {
        // `kind` names T exactly, so the bit casts are between identical types.
        switch kind {
        case .string: return unsafeBitCast(try string(at: i, path()), to: T.self)
        case .bytes:
            guard base[i] == .openBracket else { throw mismatch([UInt8].self, at: i, path()) }
            var bytes: [UInt8] = []
            var j = skipWhitespace(i + 1)
            while base[j] != .closeBracket {
                bytes.append(try integer(UInt8.self, at: j, path()))
                j = afterValue(j)
            }
            return unsafeBitCast(bytes, to: T.self)
        case .data:
            let text = try string(at: i, path())
            guard let data = Data(base64Encoded: text) else { throw corrupt("a Data value is not valid Base64", path()) }
            return unsafeBitCast(data, to: T.self)
        case .int: return unsafeBitCast(try integer(Int.self, at: i, path()), to: T.self)
        case .uint: return unsafeBitCast(try integer(UInt.self, at: i, path()), to: T.self)
        case .int64: return unsafeBitCast(try integer(Int64.self, at: i, path()), to: T.self)
        case .uint64: return unsafeBitCast(try integer(UInt64.self, at: i, path()), to: T.self)
        case .int32: return unsafeBitCast(try integer(Int32.self, at: i, path()), to: T.self)
        case .uint32: return unsafeBitCast(try integer(UInt32.self, at: i, path()), to: T.self)
        case .int16: return unsafeBitCast(try integer(Int16.self, at: i, path()), to: T.self)
        case .uint16: return unsafeBitCast(try integer(UInt16.self, at: i, path()), to: T.self)
        case .int8: return unsafeBitCast(try integer(Int8.self, at: i, path()), to: T.self)
        case .uint8: return unsafeBitCast(try integer(UInt8.self, at: i, path()), to: T.self)
        case .bool: return unsafeBitCast(try bool(at: i, path()), to: T.self)
        case .double: return unsafeBitCast(try double(at: i, path()), to: T.self)
        case .float: return unsafeBitCast(try float(at: i, path()), to: T.self)
        }
    }

    @inline(__always)
    func isNull(_ i: Int) -> Bool { base[i] == UInt8(ascii: "n") }

    private func isNumber(_ i: Int) -> Bool { base[i] == .minus || base[i].isDigit }

    func bool(at i: Int, _ path: @autoclosure () -> CodingPath) throws -> Bool {
        switch base[i] {
        case UInt8(ascii: "t"): return true
        case UInt8(ascii: "f"): return false
        default: throw mismatch(Bool.self, at: i, path())
        }
    }

    func string(at i: Int, _ path: @autoclosure () -> CodingPath) throws -> String {
        guard base[i] == .quote else { throw mismatch(String.self, at: i, path()) }
        let end = skipString(i) - 1
        let body = UnsafeBufferPointer(start: base + i + 1, count: end - i - 1)
        if memchr(base + i + 1, Int32(UInt8.backslash), body.count) == nil {
            guard let text = String(validating: body, as: UTF8.self) else { throw corrupt("a string at offset \(i) is not valid UTF-8", path()) }
            return text
        }
        return try unescape(body, at: i, path())
    }

    private func unescape(_ body: UnsafeBufferPointer<UInt8>, at offset: Int, _ path: @autoclosure () -> CodingPath) throws -> String {
        var out: [UInt8] = []
        out.reserveCapacity(body.count)
        var j = 0
        func unit(_ k: Int) -> UInt32 {
            (1...4).reduce(UInt32(0)) { $0 << 4 | UInt32(hexValue(body[k + $1])!) }
        }
        while j < body.count {
            let b = body[j]
            guard b == .backslash else {
                out.append(b)
                j += 1
                continue
            }
            let e = body[j + 1]
            j += 2
            switch e {
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = unit(j - 1)
                j += 4
                if (0xD800..<0xDC00).contains(scalar) {
                    guard j + 6 <= body.count, body[j] == .backslash, body[j + 1] == UInt8(ascii: "u"), case let low = unit(j + 1), (0xDC00..<0xE000).contains(low) else {
                        throw corrupt("a string at offset \(offset) has a \\u escape of a lone high surrogate", path())
                    }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    j += 6
                } else if (0xDC00..<0xE000).contains(scalar) {
                    throw corrupt("a string at offset \(offset) has a \\u escape of a lone low surrogate", path())
                }
                out.append(contentsOf: UTF8.encode(Unicode.Scalar(scalar)!)!)
            default: out.append(e)
            }
        }
        guard let text = String(validating: out, as: UTF8.self) else { throw corrupt("a string at offset \(offset) is not valid UTF-8", path()) }
        return text
    }

    func integer<I: FixedWidthInteger>(_: I.Type, at i: Int, _ path: @autoclosure () -> CodingPath) throws -> I {
        guard isNumber(i) else { throw mismatch(I.self, at: i, path()) }
        var j = i
        let negative = base[j] == .minus
        if negative { j += 1 }
        var magnitude: UInt64 = 0
        var whole = true
        while j < count {
            let digit = base[j] &- .zero
            guard digit < 10 else {
                // A fraction or an exponent: the value must still be a whole number.
                whole = !(base[j] == .dot || base[j] | 0x20 == UInt8(ascii: "e"))
                break
            }
            let (times10, o1) = magnitude.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times10.addingReportingOverflow(UInt64(digit))
            guard !o1, !o2 else { throw notRepresentable(I.self, at: i, path()) }
            magnitude = sum
            j += 1
        }
        if whole {
            if negative {
                guard magnitude <= UInt64(Int64.max) + 1, let value = I(exactly: magnitude == UInt64(Int64.max) + 1 ? Int64.min : -Int64(magnitude)) else {
                    throw notRepresentable(I.self, at: i, path())
                }
                return value
            }
            guard let value = I(exactly: magnitude) else { throw notRepresentable(I.self, at: i, path()) }
            return value
        }
        guard let value = I(exactly: try double(at: i, path())) else { throw notRepresentable(I.self, at: i, path()) }
        return value
    }

    private static let exactPowersOf10: [Double] = (0...22).map { (0..<$0).reduce(1.0) { r, _ in r * 10 } }

    func double(at i: Int, _ path: @autoclosure () -> CodingPath) throws -> Double {
        guard isNumber(i) else { throw mismatch(Double.self, at: i, path()) }
        let end = skipValue(i)
        // Up to 19 significant digits and a small power of ten: the mantissa and the power are exact doubles, so
        // one multiplication or division rounds correctly. Anything else goes to the standard library's parser.
        var j = i
        let negative = base[j] == .minus
        if negative { j += 1 }
        var mantissa: UInt64 = 0, digits = 0, exponent = 0
        var simple = true
        while j < end, base[j].isDigit {
            mantissa = mantissa &* 10 &+ UInt64(base[j] &- .zero)
            if mantissa != 0 { digits += 1 }
            j += 1
        }
        if j < end, base[j] == .dot {
            j += 1
            while j < end, base[j].isDigit {
                mantissa = mantissa &* 10 &+ UInt64(base[j] &- .zero)
                if mantissa != 0 { digits += 1 }
                exponent -= 1
                j += 1
            }
        }
        if j < end { simple = false }  // an exponent
        if simple, digits <= 15, mantissa < 1 << 53, exponent >= -22 {
            let m = Double(mantissa)
            let value = exponent == 0 ? m : m / Self.exactPowersOf10[-exponent]
            return negative ? -value : value
        }
        let text = String(decoding: UnsafeBufferPointer(start: base + i, count: end - i), as: UTF8.self)
        guard let value = Double(text), value.isFinite else {
            throw corrupt("the number \(text) is not representable as a Double", path())
        }
        return value
    }

    func float(at i: Int, _ path: @autoclosure () -> CodingPath) throws -> Float {
        let value = try double(at: i, path())
        let narrowed = Float(value)
        guard narrowed.isFinite else { throw notRepresentable(Float.self, at: i, path()) }
        return narrowed
    }

    // MARK: Errors

    func corrupt(_ what: String, _ path: CodingPath = .root) -> DecodingError {
        DecodingError.dataCorrupted(.init(codingPath: path.keys, debugDescription: what))
    }

    func mismatch(_ type: Any.Type, at i: Int, _ path: CodingPath) -> DecodingError {
        if isNull(i) {
            return DecodingError.valueNotFound(type, .init(codingPath: path.keys, debugDescription: "Expected \(type) value but found null instead."))
        }
        return DecodingError.typeMismatch(type, .init(codingPath: path.keys, debugDescription: "Expected to decode \(type) but found \(describeValue(i)) instead."))
    }

    private func notRepresentable(_ type: Any.Type, at i: Int, _ path: CodingPath) -> DecodingError {
        let text = String(decoding: UnsafeBufferPointer(start: base + i, count: skipValue(i) - i), as: UTF8.self)
        return corrupt("Parsed JSON number <\(text)> does not fit in \(type).", path)
    }

    func describeValue(_ i: Int) -> String {
        switch base[i] {
        case .quote: "a string"
        case .openBrace: "a dictionary"
        case .openBracket: "an array"
        case UInt8(ascii: "t"), UInt8(ascii: "f"): "a boolean"
        case UInt8(ascii: "n"): "null"
        default: "a number"
        }
    }

    private func describeByte(_ i: Int) -> String {
        guard i < count else { return "end of the document" }
        let b = base[i]
        return b >= 0x20 && b < 0x7F ? "'\(Character(Unicode.Scalar(b)))'" : "byte 0x\(String(b, radix: 16))"
    }
}

private func hexValue(_ b: UInt8) -> UInt8? {
    switch b {
    case .zero ... .nine: b - .zero
    case UInt8(ascii: "a")...UInt8(ascii: "f"): b - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): b - UInt8(ascii: "A") + 10
    default: nil
    }
}

struct JSONDecoderImpl: Decoder {
    let input: JSONInput
    /// Where the value begins.
    let at: Int
    let path: CodingPath
    var codingPath: [any CodingKey] { path.keys }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard input.base[at] == .openBrace else { throw input.mismatch([String: Any].self, at: at, path) }
        return KeyedDecodingContainer(JSONKeyedDecoder<Key>(frame: JSONObjectFrame(input: input, object: at, path: path)))
    }
    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard input.base[at] == .openBracket else { throw input.mismatch([Any].self, at: at, path) }
        return JSONUnkeyedDecoder(input: input, array: at, path: path)
    }
    func singleValueContainer() throws -> any SingleValueDecodingContainer { JSONSingleDecoder(decoder: self) }
}

/// An object being read: where its entries begin, and the entry to look at first for the next key.
final class JSONObjectFrame {
    let input: JSONInput
    /// The first entry's key (or the closing brace).
    let first: Int
    let path: CodingPath
    /// Most types read their keys in the order they were written, so a search begins after the entry found last:
    /// one comparison per key.
    var next: Int

    init(input: JSONInput, object: Int, path: CodingPath) {
        self.input = input
        self.first = input.skipWhitespace(object + 1)
        self.path = path
        self.next = first
    }
}

struct JSONKeyedDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let frame: JSONObjectFrame
    var input: JSONInput { frame.input }
    var codingPath: [any CodingKey] { frame.path.keys }

    var allKeys: [Key] {
        var keys: [Key] = []
        var i = frame.first
        while let entry = input.entry(at: i) {
            if let text = try? input.string(at: entry.key.lowerBound - 1, .root), let key = Key(stringValue: text) { keys.append(key) }
            i = entry.next
        }
        return keys
    }

    /// Where the value of `key` begins, nil when the object has no such key.
    private func find(_ key: Key) -> Int? {
        let input = input
        var name = key.stringValue
        return name.withUTF8 { wanted -> Int? in
            func matches(_ range: Range<Int>) -> Bool {
                if memchr(input.base + range.lowerBound, Int32(UInt8.backslash), range.count) == nil {
                    return range.count == wanted.count && (wanted.isEmpty || memcmp(input.base + range.lowerBound, wanted.baseAddress!, wanted.count) == 0)
                }
                // An escaped key: compare what it means.
                guard let text = try? input.string(at: range.lowerBound - 1, .root) else { return false }
                return text.utf8.elementsEqual(wanted)
            }
            func scan(from: Int, to stop: Int?) -> Int? {
                var i = from
                while i != stop, let entry = input.entry(at: i) {
                    if matches(entry.key) {
                        frame.next = entry.next
                        return entry.value
                    }
                    i = entry.next
                }
                return nil
            }
            if let value = scan(from: frame.next, to: nil) { return value }
            return frame.next == frame.first ? nil : scan(from: frame.first, to: frame.next)
        }
    }

    func contains(_ key: Key) -> Bool { find(key) != nil }

    @inline(__always)
    private func value(_ key: Key) throws -> Int {
        guard let i = find(key) else {
            throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "No value associated with key \(key) (\"\(key.stringValue)\")."))
        }
        return i
    }

    func decodeNil(forKey key: Key) throws -> Bool { input.isNull(try value(key)) }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        try input.decodeValue(T.self, at: try value(key), path: .key(key, frame.path))
    }
    func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        guard let i = find(key), !input.isNull(i) else { return nil }
        return try input.decodeValue(T.self, at: i, path: .key(key, frame.path))
    }

    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try input.bool(at: try value(key), .key(key, frame.path)) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try input.string(at: try value(key), .key(key, frame.path)) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try input.double(at: try value(key), .key(key, frame.path)) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try input.float(at: try value(key), .key(key, frame.path)) }
    @inline(__always)
    private func integer<I: FixedWidthInteger>(_ type: I.Type, _ key: Key) throws -> I {
        try input.integer(I.self, at: try value(key), .key(key, frame.path))
    }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try integer(type, key) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try integer(type, key) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try integer(type, key) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try integer(type, key) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try integer(type, key) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try integer(type, key) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try integer(type, key) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try integer(type, key) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try integer(type, key) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try integer(type, key) }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        try JSONDecoderImpl(input: input, at: try value(key), path: .key(key, frame.path)).container(keyedBy: type)
    }
    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try JSONDecoderImpl(input: input, at: try value(key), path: .key(key, frame.path)).unkeyedContainer()
    }
    func superDecoder() throws -> any Decoder { try superDecoder(forKey: Key(stringValue: "super")!) }
    func superDecoder(forKey key: Key) throws -> any Decoder {
        JSONDecoderImpl(input: input, at: try value(key), path: .key(key, frame.path))
    }
}

struct JSONUnkeyedDecoder: UnkeyedDecodingContainer {
    let input: JSONInput
    /// The first element (or the closing bracket).
    let first: Int
    let path: CodingPath
    /// The next element (or the closing bracket).
    var position: Int
    var currentIndex = 0
    var codingPath: [any CodingKey] { path.keys }
    var isAtEnd: Bool { input.base[position] == .closeBracket }
    var count: Int? {
        var n = 0, i = first
        while input.base[i] != .closeBracket {
            n += 1
            i = input.afterValue(i)
        }
        return n
    }

    init(input: JSONInput, array: Int, path: CodingPath) {
        self.input = input
        self.first = input.skipWhitespace(array + 1)
        self.path = path
        self.position = first
    }

    private mutating func next(_ type: Any.Type) throws -> Int {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(type, .init(codingPath: codingPath, debugDescription: "Unkeyed container is at end."))
        }
        let i = position
        position = input.afterValue(i)
        currentIndex += 1
        return i
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(Any?.self, .init(codingPath: codingPath, debugDescription: "Unkeyed container is at end."))
        }
        guard input.isNull(position) else { return false }
        _ = try next(Any?.self)
        return true
    }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let i = try next(T.self)
        return try input.decodeValue(T.self, at: i, path: path)
    }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        try JSONDecoderImpl(input: input, at: try next([String: Any].self), path: path).container(keyedBy: type)
    }
    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try JSONDecoderImpl(input: input, at: try next([Any].self), path: path).unkeyedContainer()
    }
    mutating func superDecoder() throws -> any Decoder {
        JSONDecoderImpl(input: input, at: try next(Any.self), path: path)
    }
}

struct JSONSingleDecoder: SingleValueDecodingContainer {
    let decoder: JSONDecoderImpl
    var codingPath: [any CodingKey] { decoder.codingPath }
    func decodeNil() -> Bool { decoder.input.isNull(decoder.at) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try decoder.input.decodeValue(T.self, at: decoder.at, path: decoder.path)
    }
}
