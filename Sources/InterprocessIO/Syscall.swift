#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import InterprocessCore

/// Runs a system call that returns -1 and sets errno on failure, retrying EINTR.
/// Returns nil for EAGAIN/EWOULDBLOCK; throws ``IPCError`` for anything else.
@inline(__always)
package func nonBlockingCall<T: FixedWidthInteger>(_ what: @autoclosure () -> String, _ call: () -> T) throws(IPCError) -> T? {
    while true {
        let result = call()
        if result >= 0 { return result }
        let err = errno
        switch err {
        case EINTR: continue
        case EAGAIN, EWOULDBLOCK: return nil
        default: throw errnoError(what(), err)
        }
    }
}

/// Like ``nonBlockingCall`` for calls that cannot block.
@inline(__always)
package func systemCall<T: FixedWidthInteger>(_ what: @autoclosure () -> String, _ call: () -> T) throws(IPCError) -> T {
    while true {
        let result = call()
        if result >= 0 { return result }
        let err = errno
        if err == EINTR { continue }
        throw errnoError(what(), err)
    }
}

/// Maps an errno to the error code a user can act on.
package func errnoError(_ what: String, _ err: Int32) -> IPCError {
    let text = String(cString: strerror(err))
    switch err {
    case ECONNREFUSED, ENOENT:
        return IPCError(.connectionRefused, "\(what): \(text); is the other side listening?", errno: err)
    case EPIPE, ECONNRESET, ENOTCONN:
        return IPCError(.peerClosed, "\(what): the peer closed the connection (\(text))", errno: err)
    case EADDRINUSE:
        return IPCError(.addressInUse, "\(what): the address is in use by another listener (\(text)); pick another port or path", errno: err)
    case EACCES, EPERM:
        return IPCError(.permissionDenied, "\(what): \(text); check the socket file's owner and mode", errno: err)
    case ETIMEDOUT:
        return IPCError(.timeout, "\(what): \(text)", errno: err)
    default:
        return IPCError(.systemCallFailed, "\(what): \(text)", errno: err)
    }
}
