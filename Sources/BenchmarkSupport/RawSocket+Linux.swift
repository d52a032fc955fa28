#if canImport(Glibc)
import Glibc
#endif

/// Plain blocking sockets for playing a foreign or hostile peer (the tests' raw clients, the test helper's
/// `hold-clients`): no library code between the caller and the bytes.
package enum RawSocket {
    /// A Unix-domain address for `path` (at most 107 bytes; longer paths are cut). `abstract`: in Linux's abstract
    /// namespace (a leading NUL, no file), as the shared-memory rendezvous socket is.
    package static func unixAddress(_ path: String, abstract: Bool = false) -> (sockaddr_un, socklen_t) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8.prefix(MemoryLayout.size(ofValue: address.sun_path) - 1 - (abstract ? 1 : 0)))
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i + (abstract ? 1 : 0)] = b }
        }
        let length = abstract ? MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)! + 1 + bytes.count : MemoryLayout<sockaddr_un>.size
        return (address, socklen_t(length))
    }

    /// A socket connected to a Unix-domain address, or -1 (errno set).
    package static func connect(unixPath path: String, abstract: Bool = false) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var (address, length) = unixAddress(path, abstract: abstract)
        return connected(fd, &address, length)
    }

    /// A socket connected to an IPv4 address, or -1 (errno set).
    package static func connect(tcpHost host: String, port: UInt16) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        inet_pton(AF_INET, host, &address.sin_addr)
        return connected(fd, &address, socklen_t(MemoryLayout<sockaddr_in>.size))
    }

    private static func connected<Address>(_ fd: Int32, _ address: inout Address, _ length: socklen_t) -> Int32 {
        guard fd >= 0 else { return -1 }
        let rc = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, length) } }
        guard rc == 0 else {
            let saved = errno
            close(fd)
            errno = saved
            return -1
        }
        return fd
    }
}
