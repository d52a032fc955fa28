#if canImport(Glibc)
import Glibc
#endif
import CInterprocessShim
import InterprocessCore
import InterprocessIO

/// Sets up the shared memory of a connection over its (already authenticated) rendezvous socket.
package enum SharedMemorySetup {
    /// The listening side: creates the sealed memory and both eventfds, sends them to the peer, and maps it.
    /// `fd` is the connected rendezvous socket (owned from now on), `peer` describes the peer for messages.
    package static func create(rendezvous fd: Int32, peer: String, ringCapacity: Int) throws(IPCError) -> SharedMemoryStream {
        precondition(SharedLayout.isValid(ringCapacity: ringCapacity))
        var ok = false
        defer { if !ok { Glibc.close(fd) } }
        let size = SharedLayout.totalSize(ringCapacity: ringCapacity)
        let memory = try systemCall("creating shared memory") { cipc_memfd_sealed("interprocess", UInt64(size)) }
        defer { Glibc.close(memory) }
        let base = try map(memory, ringCapacity: ringCapacity)
        var mapped = true
        defer { if !ok && mapped { munmap(base, SharedLayout.mappedSize(ringCapacity: ringCapacity)) } }
        base.initializeMemory(as: UInt8.self, repeating: 0, count: SharedLayout.headerSize)
        base.storeBytes(of: SharedLayout.magic.littleEndian, toByteOffset: 0, as: UInt64.self)
        base.storeBytes(of: SharedLayout.version.littleEndian, toByteOffset: 8, as: UInt32.self)
        base.storeBytes(of: UInt32(ringCapacity).littleEndian, toByteOffset: 12, as: UInt32.self)
        let mine = try systemCall("creating an eventfd") { cipc_eventfd() }
        let theirs: Int32
        do {
            theirs = try systemCall("creating an eventfd") { cipc_eventfd() }
        } catch {
            Glibc.close(mine)
            throw error
        }
        var message = [UInt8]()
        message.appendLE(SharedLayout.magic)
        message.appendLE(UInt32(ringCapacity))
        message.appendLE(UInt32(0))
        let fds: [Int32] = [memory, theirs, mine]
        let sent = message.withUnsafeBytes { m in fds.withUnsafeBufferPointer { cipc_send_fds(fd, $0.baseAddress, 3, m.baseAddress, m.count) } }
        guard sent == message.count else {
            let err = errno
            Glibc.close(mine)
            Glibc.close(theirs)
            throw errnoError("handing the shared memory to the peer", sent < 0 ? err : EPIPE)
        }
        ok = true
        mapped = false
        return SharedMemoryStream(socketFD: fd, wakeFD: mine, peerWakeFD: theirs, base: base, size: SharedLayout.mappedSize(ringCapacity: ringCapacity), ringCapacity: ringCapacity, isCreator: true, peerDescription: peer + " (shared memory)")
    }

    /// The dialling side: receives the memory and eventfds (waiting at most until `deadline`), checks them, and
    /// maps the memory.
    package static func join(rendezvous fd: Int32, peer: String, deadline: ContinuousClock.Instant) async throws(IPCError) -> SharedMemoryStream {
        var ok = false
        defer { if !ok { Glibc.close(fd) } }
        var fds = [Int32](repeating: -1, count: 4)
        var count: Int32 = 0
        var message = [UInt8](repeating: 0, count: 16)
        while true {
            let n = fds.withUnsafeMutableBufferPointer { f in
                message.withUnsafeMutableBytes { cipc_recv_fds(fd, f.baseAddress, 4, &count, $0.baseAddress, $0.count) }
            }
            if n > 0 { break }
            if n == 0 {
                throw IPCError(.peerClosed, "the listener closed the connection before handing over the shared memory; it may have refused this side (check its log)")
            }
            let err = errno
            guard err == EAGAIN || err == EWOULDBLOCK else { throw errnoError("receiving the shared memory", err) }
            guard ContinuousClock.now < deadline else {
                throw IPCError(.timeout, "the listener did not hand over the shared memory in time; it is not an Interprocess shared-memory endpoint, or it is stuck")
            }
            try? await Task.sleep(for: .milliseconds(1))
        }
        let received = Array(fds.prefix(Int(count)))
        var keep: Set<Int32> = []
        defer { for d in received where !keep.contains(d) { Glibc.close(d) } }
        let ringCapacity = message.withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt32.self))) }
        let magic = message.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard received.count == 3, magic == SharedLayout.magic, SharedLayout.isValid(ringCapacity: ringCapacity) else {
            throw IPCError(.protocolViolation, "the listener's shared-memory hand-over is malformed (\(received.count) descriptors, ring \(ringCapacity) bytes); it is not an Interprocess endpoint of this version")
        }
        let (memory, mine, theirs) = (received[0], received[1], received[2])
        let size = SharedLayout.totalSize(ringCapacity: ringCapacity)
        var info = stat()
        guard fstat(memory, &info) == 0, Int(info.st_size) == size, cipc_memfd_is_sealed(memory) == 1 else {
            throw IPCError(.protocolViolation, "the shared memory handed over is not a sealed segment of the announced size \(size); refusing to map it")
        }
        let base = try map(memory, ringCapacity: ringCapacity)
        guard base.loadUnaligned(as: UInt64.self) == SharedLayout.magic.littleEndian,
              UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 8, as: UInt32.self)) == SharedLayout.version else {
            munmap(base, SharedLayout.mappedSize(ringCapacity: ringCapacity))
            throw IPCError(.handshakeMismatch, "the shared memory's header names another layout version; both sides must run the same Interprocess version")
        }
        keep = [mine, theirs]
        ok = true
        return SharedMemoryStream(socketFD: fd, wakeFD: mine, peerWakeFD: theirs, base: base, size: SharedLayout.mappedSize(ringCapacity: ringCapacity), ringCapacity: ringCapacity, isCreator: false, peerDescription: peer + " (shared memory)")
    }

    /// Maps the header page once and each ring's data twice in a row (see ``SharedLayout/mappedSize(ringCapacity:)``):
    /// address space is reserved first, then the file's pages are mapped over it at fixed places.
    /// The incoming ring of a stream made by ``unconnected(ringCapacity:)``, for the test playing its peer.
    package struct PeerSide {
        /// The producer's published position (u64, little-endian).
        package let head: UnsafeMutableRawPointer
        /// The producer's "direction ended" flag (u32).
        package let writerClosed: UnsafeMutableRawPointer
        /// The ring's bytes (mapped twice in a row, like a connection's).
        package let data: UnsafeMutableRawPointer
        package let capacity: Int
    }

    /// A stream over fresh shared memory mapped as a connection's is, with no peer process and no descriptors:
    /// the fuzz target plays the peer by writing the incoming ring's positions and bytes itself (anything, as a
    /// hostile peer could) and reads through the stream as a connection would.
    package static func unconnected(ringCapacity: Int) throws(IPCError) -> (stream: SharedMemoryStream, peer: PeerSide) {
        precondition(SharedLayout.isValid(ringCapacity: ringCapacity))
        let size = SharedLayout.totalSize(ringCapacity: ringCapacity)
        let memory = try systemCall("creating shared memory") { cipc_memfd_sealed("interprocess", UInt64(size)) }
        defer { Glibc.close(memory) }
        let base = try map(memory, ringCapacity: ringCapacity)
        let stream = SharedMemoryStream(socketFD: -1, wakeFD: -1, peerWakeFD: -1, base: base, size: SharedLayout.mappedSize(ringCapacity: ringCapacity), ringCapacity: ringCapacity, isCreator: true, peerDescription: "fuzzed peer")
        let incoming = SharedRing(base: base, index: 1, capacity: ringCapacity)
        return (stream, PeerSide(head: incoming.head, writerClosed: incoming.writerClosed, data: incoming.data, capacity: ringCapacity))
    }

    private static func map(_ fd: Int32, ringCapacity: Int) throws(IPCError) -> UnsafeMutableRawPointer {
        let total = SharedLayout.mappedSize(ringCapacity: ringCapacity)
        guard let base = mmap(nil, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), base != MAP_FAILED else {
            throw errnoError("reserving address space for the shared memory", errno)
        }
        var pieces: [(at: Int, length: Int, fileOffset: Int)] = [(0, SharedLayout.headerSize, 0)]
        for ring in 0..<2 {
            let fileOffset = SharedLayout.headerSize + ring * ringCapacity
            let at = SharedLayout.headerSize + ring * 2 * ringCapacity
            pieces += [(at, ringCapacity, fileOffset), (at + ringCapacity, ringCapacity, fileOffset)]
        }
        for piece in pieces {
            let p = mmap(base + piece.at, piece.length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, off_t(piece.fileOffset))
            guard p == base + piece.at else {
                let err = errno
                munmap(base, total)
                throw errnoError("mapping the shared memory", err)
            }
        }
        // Fault every page in now (best effort: older kernels lack it), rather than one fault per page while
        // the first messages go through.
        _ = cipc_populate_write(base, total)
        return base
    }
}
