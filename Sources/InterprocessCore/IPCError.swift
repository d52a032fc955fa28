/// The one error type of Interprocess.
///
/// Switch on ``code`` to decide what to do; ``message`` says what happened in words meant for a person,
/// including what to try next. ``underlying`` carries the cause when there is one (an `errno`, a decoding error).
///
/// ```swift
/// do {
///     try await sender.send(job)
/// } catch let error as IPCError where error.code == .peerClosed {
///     // the worker went away: start another one
/// }
/// ```
public struct IPCError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What kind of failure this is. Extensible: new codes may be added, so switch with a `default`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        package let value: UInt16
        package init(_ value: UInt16) { self.value = value }

        /// Nobody is listening at the endpoint (or the listener refused the connection).
        public static let connectionRefused = Code(1)
        /// The peer closed the connection or died before closing its sending side: messages may be missing.
        public static let peerClosed = Code(2)
        /// A message is larger than the receiving side's maximum frame size.
        public static let frameTooLarge = Code(3)
        /// A message arrived but could not be decoded into the expected type.
        public static let decodingFailed = Code(4)
        /// The two sides disagree on codec, element type or protocol version.
        public static let handshakeMismatch = Code(5)
        /// `send` was called after `close()` on the same sender.
        public static let sendOnClosedChannel = Code(6)
        /// An operation did not complete within its time limit.
        public static let timeout = Code(7)
        /// The peer sent bytes that are not the Interprocess wire protocol (garbage, wrong magic, truncation).
        public static let protocolViolation = Code(8)
        /// An endpoint string could not be parsed.
        public static let invalidEndpoint = Code(9)
        /// The peer is not allowed to connect (for example a different user id on a Unix socket).
        public static let permissionDenied = Code(10)
        /// The address is already in use by a live listener.
        public static let addressInUse = Code(11)
        /// A value could not be encoded.
        public static let encodingFailed = Code(12)
        /// The channel was closed locally (for example a second `close()`).
        public static let alreadyClosed = Code(13)
        /// The peer reported an error and closed the connection.
        public static let peerError = Code(14)
        /// A system call failed in a way not covered by a more specific code.
        public static let systemCallFailed = Code(15)
        /// The operation was cancelled.
        public static let cancelled = Code(16)
        /// The receiving side is gone (its `Receiver` was dropped): nothing more can be sent on this channel.
        public static let receiverGone = Code(17)

        /// The code's name, as in `peerClosed`.
        public var description: String {
            switch self {
            case .connectionRefused: "connectionRefused"
            case .peerClosed: "peerClosed"
            case .frameTooLarge: "frameTooLarge"
            case .decodingFailed: "decodingFailed"
            case .handshakeMismatch: "handshakeMismatch"
            case .sendOnClosedChannel: "sendOnClosedChannel"
            case .timeout: "timeout"
            case .protocolViolation: "protocolViolation"
            case .invalidEndpoint: "invalidEndpoint"
            case .permissionDenied: "permissionDenied"
            case .addressInUse: "addressInUse"
            case .encodingFailed: "encodingFailed"
            case .alreadyClosed: "alreadyClosed"
            case .peerError: "peerError"
            case .systemCallFailed: "systemCallFailed"
            case .cancelled: "cancelled"
            case .receiverGone: "receiverGone"
            default: "code\(value)"
            }
        }
    }

    /// What kind of failure this is.
    public var code: Code
    /// What happened and what to do about it.
    public var message: String
    /// The `errno` of a failed system call, when that is the cause.
    public var errno: Int32?
    /// A textual form of the underlying error (for example a `DecodingError`), when there is one.
    public var underlying: String?
    /// When a connection broke under a sender: how many messages it had sent that the peer had not yet
    /// acknowledged as taken. They may or may not have reached the peer's application; every message before them
    /// did. Nil when none were in doubt, or for errors that are not about a broken connection.
    public var messagesInDoubt: Int?

    /// An error with `code` and a `message` that says what happened and what to do; `errno` and `underlying`
    /// (a lower layer's error) when there is one.
    public init(_ code: Code, _ message: String, errno: Int32? = nil, underlying: String? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
        self.underlying = underlying
    }

    /// The code and the message, then the errno, the underlying error and the messages in doubt when known.
    public var description: String {
        var text = "\(code): \(message)"
        if let errno { text += " (errno \(errno))" }
        if let underlying { text += " [\(underlying)]" }
        if let messagesInDoubt { text += " (\(messagesInDoubt) message\(messagesInDoubt == 1 ? "" : "s") sent and not acknowledged may not have arrived)" }
        return text
    }
}
