import InterprocessCore
import NIOCore

/// Raw bytes as SwiftNIO `ByteBuffer`s, for code that already holds its data in them.
///
/// On the wire it is `RawBytesCodec` (codec `raw`, type `bytes`), so one side may use `[UInt8]` and the other
/// `ByteBuffer`. Sending copies the readable bytes once into the connection's outbox; receiving makes the
/// message's bytes into a new `ByteBuffer` (one copy). In a separate module so that users who do not use
/// SwiftNIO do not build it.
public struct ByteBufferCodec: MessageCodec {
    /// The codec (also `.byteBuffer`).
    public init() {}
    /// `raw`, as the raw-bytes codec.
    public var name: String { "raw" }
    /// `bytes`, as the raw-bytes codec.
    public var typeName: String { "bytes" }

    /// Appends the buffer's readable bytes.
    public func encode(_ value: ByteBuffer, into buffer: inout [UInt8]) throws(IPCError) {
        buffer.append(contentsOf: value.readableBytesView)
    }

    /// A buffer holding the message's bytes.
    public func decode(_ bytes: [UInt8]) throws(IPCError) -> ByteBuffer {
        ByteBuffer(bytes: bytes)
    }
}

extension MessageCodec where Self == ByteBufferCodec {
    /// Raw bytes as `ByteBuffer`s, wire-compatible with `.raw`.
    public static var byteBuffer: ByteBufferCodec { ByteBufferCodec() }
}
