#if canImport(Glibc)
import Glibc
#endif
import CInterprocessShim
import InterprocessCore
import InterprocessIO
import InterprocessPlatform
import Synchronization

/// A connection's byte stream through shared memory, as a ``ByteStream``: the channel semantics above it are the
/// same as for sockets.
///
/// Wake-ups: each side has an eventfd the other signals, only when this side announced (in shared memory) that it
/// is about to sleep, so a busy channel makes no system calls. The eventfds and the rendezvous socket are watched
/// by the process's I/O thread; the socket carries nothing after the set-up, and its end of stream says the peer
/// process is gone (it closes on exit and on a crash alike).
///
/// Nothing read from shared memory is trusted: every position is checked against the ring's capacity and
/// against what this side knows before it is used, and the bytes go through the same checked frame decoder as
/// socket bytes (after being copied out, so the peer cannot change them while they are parsed).
package final class SharedMemoryStream: DeferredFlushing, @unchecked Sendable {
    package let peerDescription: String
    private let socketFD: Int32
    private let wakeFD: Int32
    private let peerWakeFD: Int32
    private let base: UnsafeMutableRawPointer
    private let size: Int
    private let tx: SharedRing
    private let rx: SharedRing
    /// This side's own positions (it is the only producer of `tx` and the only consumer of `rx`), never read back
    /// from shared memory. Accessed by the writer and the reader role respectively, one task at a time.
    private let txHead = Atomic<UInt64>(0)
    /// The write position last published: `txHead` runs ahead of it while bytes are written without being
    /// published (``write(_:publish:writing:)``).
    private let txPublished = Atomic<UInt64>(0)
    private let txTailSeen = Atomic<UInt64>(0)
    private let rxTail = Atomic<UInt64>(0)
    /// The read position last published to the producer: the consumer publishes it once an eighth of the ring was
    /// consumed since, and before it waits for more bytes, not after every message (each store to that line, and
    /// the fence after it, cost a transfer between the CPUs' caches). Before it waits, because it may wait for
    /// the rest of a frame it reads in place, which the producer can write only into room that was published.
    private let rxTailPublished = Atomic<UInt64>(0)
    /// The producer's position as last read (and checked), so that it is read from shared memory again only when
    /// this side has consumed up to it: each read of that line while the producer writes it is a transfer
    /// between the CPUs' caches. Any thread that reads the position may store it here; a stale value is
    /// recognised (not ahead of the read position) and read again.
    private let rxHeadSeen = Atomic<UInt64>(0)
    private let peerGone = Atomic<Bool>(false)
    /// The peer wrote an impossible position: nothing more is read from this ring (the connection fails too).
    private let peerCorrupted = Atomic<Bool>(false)

    /// Who uses the mapping and descriptors: they are released once closed and unused.
    private let use = DescriptorUse()

    private struct State {
        var closed = false
        var wakeToken: UInt64 = 0
        var socketToken: UInt64 = 0
        var interest: UInt32 = 0
        var handler: (any ByteStreamHandler)?
    }
    private let state = Lock(State())

    /// Takes ownership of the descriptors and the mapping.
    init(socketFD: Int32, wakeFD: Int32, peerWakeFD: Int32, base: UnsafeMutableRawPointer, size: Int, ringCapacity: Int, isCreator: Bool, peerDescription: String) {
        self.socketFD = socketFD
        self.wakeFD = wakeFD
        self.peerWakeFD = peerWakeFD
        self.base = base
        self.size = size
        let ring0 = SharedRing(base: base, index: 0, capacity: ringCapacity)
        let ring1 = SharedRing(base: base, index: 1, capacity: ringCapacity)
        (tx, rx) = isCreator ? (ring0, ring1) : (ring1, ring0)
        self.peerDescription = peerDescription
    }

    deinit {
        if !use.released { release() }
    }

    private func enter() throws(IPCError) {
        if !use.enter() { throw IPCError(.alreadyClosed, "the connection is closed") }
    }

    private func leave() {
        if use.leave() { release() }
    }

    /// Releases the descriptors and the mapping (once: ``DescriptorUse`` says who).
    private func release() {
        let tokens = state.withLock { ($0.wakeToken, $0.socketToken) }
        if tokens.0 != 0 { Poller.shared.unregister(fd: wakeFD, token: tokens.0) }
        if tokens.1 != 0 { Poller.shared.unregister(fd: socketFD, token: tokens.1) }
        Glibc.close(wakeFD)
        Glibc.close(peerWakeFD)
        Glibc.close(socketFD)
        munmap(base, size)
    }

    private static func corrupt(_ what: String) -> IPCError {
        IPCError(.protocolViolation, "the peer corrupted the shared memory (\(what)); the connection is closed")
    }

    private func signal(_ fd: Int32) {
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }

    /// The producer's published position, checked: it never moves back and never runs more than a ring ahead.
    private func checkedHead(tail: UInt64) throws(IPCError) -> UInt64 {
        let head = cipc_load_acquire_u64(rx.head)
        guard head >= tail, head - tail <= UInt64(rx.capacity) else {
            peerCorrupted.store(true, ordering: .relaxed)
            throw Self.corrupt("the incoming ring's write position \(head) is outside 0...\(rx.capacity) bytes ahead of the read position \(tail)")
        }
        return head
    }

    /// No lock, no system call: the peer's published position against this side's, and the end flags.
    package var mayHaveInput: Bool { hasReadable(atLeast: 1) }

    /// The readable bytes (contiguous: the ring is mapped twice in a row), or nil at the end. Caller has entered.
    private func readable() throws(IPCError) -> UnsafeRawBufferPointer? {
        guard !peerCorrupted.load(ordering: .relaxed) else { throw Self.corrupt("an impossible write position, seen before") }
        let tail = rxTail.load(ordering: .relaxed)
        var head = rxHeadSeen.load(ordering: .acquiring)
        // The producer's position is read from shared memory only once everything known to be published was
        // consumed (or what is known is stale: another thread may have stored an older one).
        if head <= tail || head - tail > UInt64(rx.capacity) {
            head = try checkedHead(tail: tail)
            rxHeadSeen.store(head, ordering: .releasing)
        }
        if head == tail {
            // The producer sets writerClosed after its last byte, and a dead peer's bytes stay readable: look
            // again after seeing either, so nothing published just before is missed.
            let ended = cipc_load_u32(rx.writerClosed) != 0 || peerGone.load(ordering: .acquiring)
            guard ended else { return UnsafeRawBufferPointer(start: rx.data, count: 0) }
            head = try checkedHead(tail: tail)
            rxHeadSeen.store(head, ordering: .releasing)
            if head == tail { return nil }
        }
        return UnsafeRawBufferPointer(start: rx.data + (Int(tail) & (rx.capacity - 1)), count: Int(head - tail))
    }

    package func consume(_ count: Int) {
        let newTail = rxTail.load(ordering: .relaxed) + UInt64(count)
        rxTail.store(newTail, ordering: .relaxed)
        if newTail - rxTailPublished.load(ordering: .relaxed) >= UInt64(rx.capacity / 8) { publishTail(newTail) }
    }

    /// Publishes what was consumed and not yet published: before this side waits.
    private func publishConsumed() {
        let tail = rxTail.load(ordering: .relaxed)
        if tail != rxTailPublished.load(ordering: .relaxed) { publishTail(tail) }
    }

    private func publishTail(_ tail: UInt64) {
        rxTailPublished.store(tail, ordering: .relaxed)
        cipc_store_release_u64(rx.tail, tail)
        cipc_fence()
        if cipc_load_u32(rx.producerSleeping) != 0 && cipc_exchange_u32(rx.producerSleeping, 0) != 0 {
            signal(peerWakeFD)
        }
    }

    package func read(into buffer: UnsafeMutableRawBufferPointer) throws(IPCError) -> ReadOutcome {
        guard buffer.count > 0 else { return .wouldBlock }
        try enter()
        defer { leave() }
        guard let bytes = try readable() else { return .endOfStream }
        guard bytes.count > 0 else { return .wouldBlock }
        let count = min(bytes.count, buffer.count)
        buffer.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: count)
        consume(count)
        return .bytes(count)
    }

    /// The free room at the write position (contiguous), at least `wanted` bytes if there are (see
    /// ``consumerPosition(wanted:)``). Caller has entered.
    private func room(wanted: Int) throws(IPCError) -> UnsafeMutableRawBufferPointer {
        if peerGone.load(ordering: .acquiring) {
            throw IPCError(.peerClosed, "the peer process is gone (its end of the shared memory closed)")
        }
        let head = txHead.load(ordering: .relaxed)
        let tail = try consumerPosition(wanted: wanted)
        return UnsafeMutableRawBufferPointer(start: tx.data + (Int(head) & (tx.capacity - 1)), count: tx.capacity - Int(head - tail))
    }

    /// The consumer's position as far as this side needs it: the one kept from the last reading while the room it
    /// leaves is at least `wanted`, otherwise read again from shared memory and checked (it never moves back and
    /// never passes what this side wrote). That line is written by the peer: loading it on every write cost a
    /// transfer between the CPUs' caches each time.
    private func consumerPosition(wanted: Int) throws(IPCError) -> UInt64 {
        let head = txHead.load(ordering: .relaxed)
        let seen = txTailSeen.load(ordering: .relaxed)
        if tx.capacity - Int(head - seen) >= wanted { return seen }
        let tail = cipc_load_acquire_u64(tx.tail)
        guard tail >= seen, tail <= head else {
            throw Self.corrupt("the outgoing ring's read position \(tail) is outside \(seen)...\(head)")
        }
        txTailSeen.store(tail, ordering: .relaxed)
        return tail
    }

    package func publish(_ count: Int) {
        let position = txHead.load(ordering: .relaxed) + UInt64(count)
        txHead.store(position, ordering: .relaxed)
        txPublished.store(position, ordering: .relaxed)
        cipc_store_release_u64(tx.head, position)
        cipc_fence()
        if cipc_load_u32(tx.consumerSleeping) != 0 && cipc_exchange_u32(tx.consumerSleeping, 0) != 0 {
            signal(peerWakeFD)
        }
    }

    package func write(_ segments: [[UInt8]], offset: Int) throws(IPCError) -> Int {
        guard !segments.isEmpty else { return 0 }
        try enter()
        defer { leave() }
        // Bytes written before without publishing go first: the peer must be able to read them (and make room)
        // even when this write finds no room.
        publishPendingEntered()
        var wanted = -offset
        for segment in segments { wanted += segment.count }
        let room = try room(wanted: wanted)
        guard room.count > 0 else { return 0 }
        var written = 0
        var published = 0
        var skip = offset
        for segment in segments where written < room.count {
            segment.withUnsafeBytes { bytes in
                var left = min(bytes.count - skip, room.count - written)
                var source = bytes.baseAddress! + skip
                while left > 0 {
                    let piece = min(left, Self.publishChunk)
                    (room.baseAddress! + written).copyMemory(from: source, byteCount: piece)
                    written += piece
                    source += piece
                    left -= piece
                    if written - published >= Self.publishChunk {
                        publish(written - published)
                        published = written
                    }
                }
                skip = 0
            }
        }
        if written > published { publish(written - published) }
        return written
    }

    /// A large write is published in pieces of this size, so that the reader copies the first piece out while the
    /// rest is still being copied in (published once at the end, a 4 MiB message waited for the whole copy).
    private static let publishChunk = 256 << 10

    package func start(handler: any ByteStreamHandler) {
        let wakeToken = Poller.shared.register(fd: wakeFD) { [weak self] _ in self?.woken() }
        let socketToken = Poller.shared.register(fd: socketFD) { [weak self] _ in self?.peerHungUp() }
        state.withLock { s in
            s.wakeToken = wakeToken
            s.socketToken = socketToken
            s.handler = handler
        }
        // The rendezvous socket is watched for the peer's exit from now on.
        Poller.shared.arm(fd: socketFD, token: socketToken, events: UInt32(CIPC_EV_READ))
    }

    /// Announces that this side sleeps until the peer publishes (read) or makes room (write), then asks the I/O
    /// thread to watch the eventfd. When the condition already holds, it signals itself so the event fires at once.
    package func arm(read: Bool, write: Bool) {
        arm(read: read, write: write, readThreshold: 1)
    }

    private func arm(read: Bool, write: Bool, readThreshold: Int) {
        var wanted: UInt32 = 0
        if read { wanted |= UInt32(CIPC_EV_READ) }
        if write { wanted |= UInt32(CIPC_EV_WRITE) }
        let token = state.withLock { s -> UInt64? in
            guard !s.closed, s.wakeToken != 0 else { return nil }
            s.interest |= wanted
            return s.wakeToken
        }
        guard let token else { return }
        let gone = peerGone.load(ordering: .acquiring)
        var readyNow = gone
        if read {
            cipc_store_u32(rx.consumerSleeping, 1)
            cipc_fence()
            if hasReadable(atLeast: readThreshold) {
                _ = cipc_exchange_u32(rx.consumerSleeping, 0)
                readyNow = true
            }
        }
        if write {
            cipc_store_u32(tx.producerSleeping, 1)
            cipc_fence()
            let used = txHead.load(ordering: .relaxed) &- cipc_load_acquire_u64(tx.tail)
            if used < UInt64(tx.capacity) {
                _ = cipc_exchange_u32(tx.producerSleeping, 0)
                readyNow = true
            }
        }
        Poller.shared.arm(fd: wakeFD, token: token, events: UInt32(CIPC_EV_READ))
        if readyNow { signal(wakeFD) }
    }

    /// The eventfd fired (I/O thread): report whatever was armed; the core re-checks and re-arms if needed.
    private func woken() {
        var value: UInt64 = 0
        _ = Glibc.read(wakeFD, &value, 8)
        fire()
    }

    private func fire() {
        let (fired, handler) = state.withLock { s -> (UInt32, (any ByteStreamHandler)?) in
            let fired = s.interest
            s.interest = 0
            return (fired, s.closed ? nil : s.handler)
        }
        guard fired != 0, let handler else { return }
        handler.streamReady(readable: fired & UInt32(CIPC_EV_READ) != 0, writable: fired & UInt32(CIPC_EV_WRITE) != 0)
    }

    /// The rendezvous socket became readable or hung up: the peer process closed its end or died.
    private func peerHungUp() {
        peerGone.store(true, ordering: .releasing)
        fire()
    }

    package func hasReadable(atLeast count: Int) -> Bool {
        let tail = rxTail.load(ordering: .relaxed)
        let seen = rxHeadSeen.load(ordering: .acquiring)
        if seen > tail && seen - tail >= UInt64(count) && seen - tail <= UInt64(rx.capacity) { return true }
        let head = cipc_load_acquire_u64(rx.head)
        if head >= tail && head - tail <= UInt64(rx.capacity) { rxHeadSeen.store(head, ordering: .releasing) }
        if head &- tail >= UInt64(count) || cipc_load_u32(rx.writerClosed) != 0 || peerGone.load(ordering: .acquiring) { return true }
        // About to wait (spinning, or before sleeping): see `rxTailPublished`.
        publishConsumed()
        return false
    }

    package var flushTarget: (handler: (any ByteStreamHandler)?, closed: Bool) {
        state.withLock { ($0.handler, $0.closed) }
    }

    package func shutdownWrite() {
        guard (try? enter()) != nil else { return }
        defer { leave() }
        cipc_store_u32(tx.writerClosed, 1)
        cipc_fence()
        if cipc_load_u32(tx.consumerSleeping) != 0 && cipc_exchange_u32(tx.consumerSleeping, 0) != 0 {
            signal(peerWakeFD)
        }
    }

    package func close() {
        state.withLock { s in
            s.handler = nil
            s.closed = true
        }
        if use.close() { release() }
    }
}

extension SharedMemoryStream: InPlaceStream {
    package var inPlaceCapacity: Int { rx.capacity }

    package func withReadableBytes<R>(_ body: (UnsafeRawBufferPointer?) throws -> R) throws -> R {
        try enter()
        defer { leave() }
        return try body(try readable())
    }

    package func consumeReadable(_ body: (UnsafeRawBufferPointer?) throws -> Int) throws {
        try enter()
        defer { leave() }
        try consumeReadableHeld(body)
    }

    package func consumeReadableHeld(_ body: (UnsafeRawBufferPointer?) throws -> Int) throws {
        let consumed = try body(try readable())
        if consumed > 0 { consume(consumed) }
    }

    package func beginHold() -> Bool { use.enter() }

    package func endHold() { leave() }

    package func write(_ count: Int, publish now: Bool, writing body: (UnsafeMutableRawBufferPointer) -> Void) throws -> Bool {
        try enter()
        defer { leave() }
        return try writeHeld(count, publish: now, writing: body)
    }

    package func writeHeld(_ count: Int, publish now: Bool, writing body: (UnsafeMutableRawBufferPointer) -> Void) throws -> Bool {
        guard let region = try reserveHeld(count) else { return false }
        body(region)
        commitHeld(count, publish: now)
        return true
    }

    package func publishWritten() throws {
        try enter()
        defer { leave() }
        publishPendingEntered()
    }

    package func publishWrittenHeld() throws {
        publishPendingEntered()
    }

    package func reserveHeld(_ count: Int) throws -> UnsafeMutableRawBufferPointer? {
        let room = try room(wanted: count)
        guard room.count >= count else { return nil }
        return UnsafeMutableRawBufferPointer(rebasing: room[..<count])
    }

    package func commitHeld(_ count: Int, publish now: Bool) {
        if now {
            publish(count)
        } else {
            txHead.store(txHead.load(ordering: .relaxed) + UInt64(count), ordering: .relaxed)
        }
    }

    /// Publishes what was written without publishing, if anything (caller has entered).
    private func publishPendingEntered() {
        if txHead.load(ordering: .relaxed) != txPublished.load(ordering: .relaxed) { publish(0) }
    }

    package func withWritableBytes<R>(_ count: Int, _ body: (UnsafeMutableRawBufferPointer?) throws -> R) throws -> R {
        try enter()
        defer { leave() }
        let room = try room(wanted: count)
        guard room.count >= count else { return try body(nil) }
        return try body(UnsafeMutableRawBufferPointer(rebasing: room[..<count]))
    }

    package func hasRoom(_ count: Int) -> Bool {
        // A position out of bounds reads as no room; the write that follows reports it.
        guard let tail = try? consumerPosition(wanted: count) else { return false }
        return tx.capacity - Int(txHead.load(ordering: .relaxed) - tail) >= count
    }

    package func armRead(atLeast count: Int) {
        arm(read: true, write: false, readThreshold: count)
    }
}
