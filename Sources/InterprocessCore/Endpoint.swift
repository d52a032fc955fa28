/// Where a channel listens or connects.
///
/// Parsed from the strings users type:
///
/// | form | meaning |
/// |---|---|
/// | `unix:/path/to.sock` | a Unix domain socket file |
/// | `tcp://127.0.0.1:8080` | TCP on an IPv4 address |
/// | `tcp://[::1]:8080` | TCP on an IPv6 address |
/// | `tcp://:8080` | TCP on loopback (`127.0.0.1`) |
/// | `tcp://localhost:8080` | TCP on loopback |
/// | `shm:jobs` | shared memory on this host, found by name (letters, digits, `.`, `_`, `-`; at most 64) |
///
/// TCP listeners bind the address given and nothing wider: to accept from other hosts, say
/// `tcp://0.0.0.0:PORT` explicitly.
public enum Endpoint: Sendable, Hashable, CustomStringConvertible, ExpressibleByStringLiteral {
    /// A Unix domain socket at `path` in the file system (created mode 0600 by the listener, removed when it
    /// closes).
    case unix(path: String)
    /// TCP to `host` (an IPv4 or IPv6 address; a listener binds exactly it) and `port` (0: the kernel picks one
    /// when listening; the listener reports it in its `endpoint`).
    case tcp(host: String, port: UInt16)
    /// Shared memory between processes of one host. The name is where the two sides meet: a Unix socket in
    /// Linux's abstract namespace, private to the user (it leaves no file behind), over which the listener
    /// hands the dialer the shared memory.
    case sharedMemory(name: String)

    /// The forms ``init(parsing:)`` accepts, for error messages and help texts.
    public static let acceptedForms = "unix:/path/to.sock, tcp://127.0.0.1:8080, tcp://[::1]:8080, tcp://:8080 (loopback), shm:NAME"

    /// Parses an endpoint string, throwing ``IPCError/Code-swift.struct/invalidEndpoint`` with the accepted forms.
    public init(parsing text: String) throws(IPCError) {
        func bad(_ why: String) -> IPCError {
            IPCError(.invalidEndpoint, "'\(text)' is not an endpoint: \(why). Accepted forms: \(Endpoint.acceptedForms)")
        }
        if text.hasPrefix("unix:") {
            var path = String(text.dropFirst(5))
            if path.hasPrefix("//") { path = String(path.dropFirst(2)) }
            guard !path.isEmpty else { throw bad("the socket path is empty") }
            guard path.utf8.count < 104 else {
                throw bad("the socket path is \(path.utf8.count) bytes; Unix socket paths must be under 104 bytes")
            }
            guard !path.utf8.contains(0) else { throw bad("the socket path contains a NUL byte") }
            self = .unix(path: path)
            return
        }
        if text.hasPrefix("shm:") {
            let name = String(text.dropFirst(4))
            guard !name.isEmpty, name.utf8.count <= 64 else { throw bad("a shared-memory name has 1 to 64 characters") }
            let allowed = name.unicodeScalars.allSatisfy { c in
                c.isASCII && (c.properties.isAlphabetic || ("0"..."9").contains(c) || c == "." || c == "_" || c == "-")
            }
            guard allowed else { throw bad("a shared-memory name may contain only letters, digits, '.', '_' and '-'") }
            self = .sharedMemory(name: name)
            return
        }
        guard text.hasPrefix("tcp://") else { throw bad("it starts with none of 'unix:', 'tcp://' and 'shm:'") }
        let rest = text.dropFirst(6)
        let hostPart: Substring
        let portPart: Substring
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw bad("the IPv6 address has no closing ']'") }
            hostPart = rest[rest.index(after: rest.startIndex)..<close]
            let afterBracket = rest[rest.index(after: close)...]
            guard afterBracket.hasPrefix(":") else { throw bad("no ':PORT' after the IPv6 address") }
            portPart = afterBracket.dropFirst()
        } else {
            guard let colon = rest.lastIndex(of: ":") else { throw bad("no ':PORT'") }
            hostPart = rest[..<colon]
            portPart = rest[rest.index(after: colon)...]
            if hostPart.contains(":") { throw bad("an IPv6 address must be written in brackets, like [::1]") }
        }
        guard let port = UInt16(portPart) else { throw bad("'\(portPart)' is not a port number (0-65535)") }
        var host = String(hostPart)
        if host.isEmpty || host == "localhost" { host = "127.0.0.1" }
        self = .tcp(host: host, port: port)
    }

    /// An endpoint written as a literal, as ``init(parsing:)`` reads it; a literal that is not one stops the
    /// program (use ``init(parsing:)`` for text from outside).
    public init(stringLiteral value: String) {
        do { try self.init(parsing: value) } catch { preconditionFailure("\(error)") }
    }

    /// The endpoint in the form ``init(parsing:)`` reads.
    public var description: String {
        switch self {
        case .unix(let path): "unix:\(path)"
        case .tcp(let host, let port): host.contains(":") ? "tcp://[\(host)]:\(port)" : "tcp://\(host):\(port)"
        case .sharedMemory(let name): "shm:\(name)"
        }
    }
}
