#if canImport(Glibc)
import Glibc
#endif
import CInterprocessShim
import InterprocessCore
import InterprocessIO

/// A resolved socket address for bind/connect.
enum SocketAddress {
    case unix(sockaddr_un)
    /// A name in Linux's abstract socket namespace (no file), with its exact address length.
    case abstract(sockaddr_un, socklen_t)
    case ipv4(sockaddr_in)
    case ipv6(sockaddr_in6)

    var family: Int32 {
        switch self {
        case .unix, .abstract: AF_UNIX
        case .ipv4: AF_INET
        case .ipv6: AF_INET6
        }
    }

    init(_ endpoint: Endpoint) throws(IPCError) {
        switch endpoint {
        case .unix(let path): self = try .unix(path: path)
        case .tcp(let host, let port): self = try .tcp(host: host, port: port)
        case .sharedMemory(let name): self = .abstract(name: "interprocess-shm-\(getuid())-\(name)")
        }
    }

    /// A non-blocking, close-on-exec stream socket of this address's family.
    func makeSocket() throws(IPCError) -> Int32 {
        try systemCall("creating a socket") { cipc_socket(family, Int32(SOCK_STREAM.rawValue), 1) }
    }

    static func unix(path: String) throws(IPCError) -> SocketAddress {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw IPCError(.invalidEndpoint, "the socket path '\(path)' is too long (\(bytes.count) bytes); use a shorter path")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return .unix(address)
    }

    /// `name` (at most 100 bytes) in the abstract namespace: sun_path starts with a NUL byte.
    static func abstract(name: String) -> SocketAddress {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(name.utf8.prefix(100))
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw[0] = 0
            for (i, b) in bytes.enumerated() { raw[i + 1] = b }
        }
        let length = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)! + 1 + bytes.count
        return .abstract(address, socklen_t(length))
    }

    static func tcp(host: String, port: UInt16) throws(IPCError) -> SocketAddress {
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = port.bigEndian
            a.sin_addr = v4
            return .ipv4(a)
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 {
            var a = sockaddr_in6()
            a.sin6_family = sa_family_t(AF_INET6)
            a.sin6_port = port.bigEndian
            a.sin6_addr = v6
            return .ipv6(a)
        }
        // A host name: resolve it.
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &result)
        guard rc == 0, let first = result else {
            throw IPCError(.invalidEndpoint, "cannot resolve host '\(host)': \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(result) }
        switch first.pointee.ai_family {
        case AF_INET:
            return .ipv4(first.pointee.ai_addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee })
        case AF_INET6:
            return .ipv6(first.pointee.ai_addr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee })
        default:
            throw IPCError(.invalidEndpoint, "host '\(host)' resolved to an unsupported address family")
        }
    }

    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        switch self {
        case .unix(var a):
            return withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        case .abstract(var a, let length):
            return withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) } }
        case .ipv4(var a):
            return withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        case .ipv6(var a):
            return withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        }
    }

    /// The local or peer address of a TCP socket as "host:port".
    static func describe(fd: Int32, peer: Bool) -> (host: String, port: UInt16)? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { peer ? getpeername(fd, $0, &length) : getsockname(fd, $0, &length) }
        }
        guard rc == 0 else { return nil }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) { p in
                p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { a in
                    var addr = a.pointee.sin_addr
                    inet_ntop(AF_INET, &addr, &text, socklen_t(text.count))
                    return (String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self), UInt16(bigEndian: a.pointee.sin_port))
                }
            }
        case AF_INET6:
            return withUnsafePointer(to: &storage) { p in
                p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { a in
                    var addr = a.pointee.sin6_addr
                    inet_ntop(AF_INET6, &addr, &text, socklen_t(text.count))
                    return (String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self), UInt16(bigEndian: a.pointee.sin6_port))
                }
            }
        default:
            return nil
        }
    }
}
