import Foundation
import PropertyBased
import Testing

@testable import InterprocessCore

/// The JSON codec writes and reads what Foundation's coders do with their default strategies: each side must
/// understand the other's output, for every kind of value `Codable` produces.
@Suite("JSON codec")
struct JSONCodecTests {
    struct Record: Codable, Equatable, Sendable {
        var int: Int64
        var unsigned: UInt64
        var small: Int8
        var double: Double
        var float: Float
        var text: String
        var flag: Bool
        var maybe: Int32?
        var list: [Int16]
        var bytes: [UInt8]
    }

    /// Strings with what JSON must escape (quotes, backslashes, slashes, control characters) and what it must
    /// not touch (multi-byte UTF-8, including characters outside the basic plane).
    static let character = Gen<Character>.oneOf(
        Gen.character(in: "\u{0}"..."\u{7F}").eraseToAnySequence(),
        Gen.character(in: "\u{80}"..."\u{7FF}").eraseToAnySequence(),
        Gen.character(in: "\u{1F600}"..."\u{1F64F}").eraseToAnySequence(),
        Gen.element(of: ["\"", "\\", "/", "\n", "\t", "\u{1}", "\u{1F}"]).map { $0! }.eraseToAnySequence())

    static let record = zip(
        Gen.int64(), Gen.uint64(), Gen.int8(),
        Gen<Double>.oneOf(
            Gen.double(in: -1e300...1e300).eraseToAnySequence(), Gen.double(in: -1...1).eraseToAnySequence(),
            Gen.int(in: -1_000_000...1_000_000).map { Double($0) / 100 }.eraseToAnySequence(),
            Gen.uint64().map { Double(bitPattern: $0) }.filter(\.isFinite).eraseToAnySequence()),
        Gen.float(in: -1e30...1e30),
        character.string(of: 0...40),
        Gen.bool, Gen.int32().optional, Gen.int16().array(of: 0...5), Gen.uint8().array(of: 0...5)
    ).map { Record(int: $0, unsigned: $1, small: $2, double: $3, float: $4, text: $5, flag: $6, maybe: $7, list: $8, bytes: $9) }

    @Test func randomValuesRoundTripAndAgreeWithFoundation() async {
        let codec = JSONCodec(Record.self)
        await propertyCheck(count: 500, input: Self.record) { value in
            var ours: [UInt8] = []
            try codec.encode(value, into: &ours)
            #expect(try codec.decode(ours) == value)
            // Foundation reads what we write, and we read what Foundation writes.
            #expect(try JSONDecoder().decode(Record.self, from: Data(ours)) == value)
            let theirs = try JSONEncoder().encode(value)
            #expect(try codec.decode(Array(theirs)) == value)
            // The same document, up to the order of keys.
            let a = try JSONSerialization.jsonObject(with: Data(ours)) as! NSDictionary
            let b = try JSONSerialization.jsonObject(with: theirs) as! NSDictionary
            #expect(a == b)
        }
    }

    /// Every field written as Foundation writes it: numbers without a trailing ".0", "/" escaped.
    @Test func primitivesAreWrittenAsFoundationWritesThem() throws {
        func check<T: Codable & Sendable & Equatable>(_ value: T) throws {
            var ours: [UInt8] = []
            try JSONCodec(T.self).encode(value, into: &ours)
            #expect(String(decoding: ours, as: UTF8.self) == String(decoding: try JSONEncoder().encode(value), as: UTF8.self), "\(value)")
            #expect(try JSONCodec(T.self).decode(ours) == value)
        }
        for d in [0.0, -0.0, 5.0, 0.1, 1e-5, 1e16, 1e21, 1.2345678901234568e+20, .greatestFiniteMagnitude, .leastNonzeroMagnitude, -123.456] { try check(d) }
        for f in [Float(0.1), 1e10, .greatestFiniteMagnitude, -2.5] { try check(f) }
        for i in [Int.min, -1, 0, 9, 10, Int.max] { try check(i) }
        try check(UInt64.max)
        try check("a/b\"c\\d\n\r\t\u{8}\u{C}\u{1}\u{1F}é😀")
        try check([true, false])
        try check([Int?.none, 1])
        try check(Date(timeIntervalSinceReferenceDate: 12.5))
        try check(Data([1, 2, 3, 250]))
        try check(URL(string: "https://example.org/a?b=c&d=%20")!)
        try check(Decimal(string: "3.14159")!)
        try check([[String: Int]]([["a": 1]]))
    }

    @Test func nestedValuesRoundTrip() throws {
        let value = Nested(name: "héllo", kind: .b, values: [1.5, -2], optional: 7, missing: nil, map: ["k": [1, 2], "e": []], bytes: [0, 255], flags: [true, nil, false], inner: .init(x: -3, y: .max))
        var bytes: [UInt8] = []
        try JSONCodec(Nested.self).encode(value, into: &bytes)
        #expect(try JSONCodec(Nested.self).decode(bytes) == value)
        #expect(try JSONDecoder().decode(Nested.self, from: Data(bytes)) == value)
        for seed in 0..<50 {
            let tree = BinaryCodecTests.Tree.make(seed % 4, seed)
            bytes = []
            try JSONCodec(BinaryCodecTests.Tree.self).encode(tree, into: &bytes)
            #expect(try JSONCodec(BinaryCodecTests.Tree.self).decode(bytes) == tree)
            #expect(try JSONDecoder().decode(BinaryCodecTests.Tree.self, from: Data(bytes)) == tree)
        }
    }

    enum Shape: Codable, Equatable, Sendable {
        case circle(radius: Double)
        case polygon([Int], name: String?)
        case empty
    }

    /// Synthesized enums with associated values use nested containers; dictionaries with integer keys use keys
    /// made from integers.
    @Test func enumsAndIntegerKeyedDictionaries() throws {
        let value: [Shape] = [.circle(radius: 2), .polygon([1, 2], name: nil), .polygon([], name: "x"), .empty]
        var bytes: [UInt8] = []
        try JSONCodec([Shape].self).encode(value, into: &bytes)
        #expect(try JSONCodec([Shape].self).decode(bytes) == value)
        #expect(try JSONDecoder().decode([Shape].self, from: Data(bytes)) == value)
        let map = [1: "one", -7: "minus seven"]
        bytes = []
        try JSONCodec([Int: String].self).encode(map, into: &bytes)
        #expect(try JSONCodec([Int: String].self).decode(bytes) == map)
        #expect(try JSONDecoder().decode([Int: String].self, from: Data(bytes)) == map)
    }

    /// Writes its nested container after writing to the parent again: not possible as a stream, so the codec
    /// falls back to Foundation's encoder, and the result is still the value.
    struct OutOfOrder: Codable, Equatable, Sendable {
        var a: Int, b: Int, inner: Int
        enum CodingKeys: String, CodingKey { case a, b, n }
        enum Inner: String, CodingKey { case inner }
        init(a: Int, b: Int, inner: Int) { (self.a, self.b, self.inner) = (a, b, inner) }
        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            var nested = container.nestedContainer(keyedBy: Inner.self, forKey: .n)
            try container.encode(a, forKey: .a)
            try nested.encode(inner, forKey: .inner)
            try container.encode(b, forKey: .b)
        }
        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            let nested = try container.nestedContainer(keyedBy: Inner.self, forKey: .n)
            (a, b, inner) = (try container.decode(Int.self, forKey: .a), try container.decode(Int.self, forKey: .b), try nested.decode(Int.self, forKey: .inner))
        }
    }

    @Test func aValueThatCannotBeStreamedIsStillEncoded() throws {
        let value = OutOfOrder(a: 1, b: 2, inner: 3)
        var bytes: [UInt8] = [9]
        try JSONCodec(OutOfOrder.self).encode(value, into: &bytes)
        #expect(bytes.first == 9)
        let document = Array(bytes.dropFirst())
        #expect(try JSONCodec(OutOfOrder.self).decode(document) == value)
        #expect(try JSONDecoder().decode(OutOfOrder.self, from: Data(document)) == value)
    }

    /// What other JSON writers produce: whitespace, escaped keys, \u escapes with surrogate pairs, whole numbers
    /// written with a fraction or exponent, repeated keys (the first counts, as in Foundation).
    @Test func readsWhatOtherWritersProduce() throws {
        struct P: Codable, Equatable { var x: Int; var name: String; var ratio: Double }
        let text = " {\n \"\\u0078\" : 1.0e2 ,\t\"name\":\"\\ud83d\\ude00 \\u00e9\\n\", \"ratio\": -2.5E-3, \"x\": 5 } \n"
        #expect(try JSONCodec(P.self).decode(Array(text.utf8)) == P(x: 100, name: "😀 é\n", ratio: -0.0025))
        #expect(try JSONCodec(P.self).decode(Array(text.utf8)) == (try JSONDecoder().decode(P.self, from: Data(text.utf8))))
    }

    /// Bad documents and values of the wrong kind are decoding errors that say what and where, never a crash.
    @Test func badInputIsATypedErrorNamingWhatAndWhere() throws {
        func failure<T: Codable & Sendable>(_ type: T.Type, _ text: String) -> String? {
            let result = Result { () throws(IPCError) in try JSONCodec(T.self).decode(Array(text.utf8)) }
            guard case .failure(let error) = result else { return nil }
            return error.code == .decodingFailed ? "\(error)" : "wrong code \(error.code)"
        }
        struct P: Codable { var x: UInt8; var inner: [String: Bool]? }
        #expect(failure(P.self, #"{"x": 256}"#)?.contains("does not fit in UInt8") == true)
        #expect(failure(P.self, #"{"x": 1.5}"#)?.contains("does not fit in UInt8") == true)
        #expect(failure(P.self, #"{"y": 1}"#)?.contains("\"x\"") == true)
        #expect(failure(P.self, #"{"x": "1"}"#)?.contains("Expected to decode UInt8 but found a string") == true)
        #expect(failure(P.self, #"{"x": 1, "inner": {"a": 2}}"#)?.contains("inner") == true)
        #expect(failure(P.self, #"{"x": 1} x"#)?.contains("after the JSON value") == true)
        #expect(failure(P.self, #"{"x": 01}"#) != nil)
        #expect(failure(P.self, #"{"x": 1,}"#) != nil)
        #expect(failure(P.self, "{\"x\": 1, \"s\": \"a\u{1}\"}")?.contains("control character") == true)
        #expect(failure(String.self, #""\ud800""#)?.contains("surrogate") == true)
        #expect(failure(String.self, #""\x""#)?.contains("invalid escape") == true)
        #expect(failure(Double.self, "1e400")?.contains("not representable") == true)
        #expect(failure([Int].self, String(repeating: "[", count: 600) + String(repeating: "]", count: 600))?.contains("nest deeper") == true)
        #expect(failure(Int.self, "") != nil)
        // Within the nesting limit, a deep document decodes.
        struct Deep: Codable { var next: [Deep] }
        #expect(failure(Deep.self, String(repeating: "{\"next\":[", count: 200) + "{\"next\":[]}" + String(repeating: "]}", count: 200)) == nil)

        // Every cut and a set of corruptions of a valid document fail or decode, never crash.
        var bytes: [UInt8] = []
        let value = Nested(name: "héllo", kind: .b, values: [1.5, -2], optional: 7, missing: nil, map: ["k": [1, 2]], bytes: [0, 255], flags: [true, nil], inner: .init(x: -3, y: 9))
        try JSONCodec(Nested.self).encode(value, into: &bytes)
        for cut in 0..<bytes.count {
            #expect(throws: IPCError.self) { try JSONCodec(Nested.self).decode(Array(bytes[0..<cut])) }
        }
        for i in 0..<bytes.count {
            for flip: UInt8 in [0x01, 0x20, 0x80] {
                var copy = bytes
                copy[i] ^= flip
                _ = try? JSONCodec(Nested.self).decode(copy)
            }
        }
    }

    /// A container a type keeps after its `init(from:)` still reads its own message.
    final class Keeper: Decodable, @unchecked Sendable {
        let container: KeyedDecodingContainer<Key>
        enum Key: String, CodingKey { case v }
        init(from decoder: any Decoder) throws { container = try decoder.container(keyedBy: Key.self) }
    }

    @Test func aContainerKeptAfterDecodingStaysValid() throws {
        var kept: [Keeper] = []
        for i in 0..<20 {
            kept.append(try JSONDecoding.decode(Keeper.self, from: Array("{\"v\": \(i)}".utf8)))
        }
        for (i, keeper) in kept.enumerated() {
            #expect(try keeper.container.decode(Int.self, forKey: .v) == i)
        }
    }
}
